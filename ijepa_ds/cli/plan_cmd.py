"""``ijepa-ds plan``: will a config fit, per GPU, and what would make it fit.

    ijepa-ds plan --config vit_h14_in1k [KEY=VALUE ...] --world-size 16 --gpu-mem 80

Prints the per-rank memory table (model states, activations, transients, peak), the FLOPs
per image and a verdict. Exit status 0 when it fits, 1 when it does not (the message names
the largest terms and the overrides that would fit), 2 for a configuration error.
``--batch``, ``--image-size``, ``--zero-stage`` and ``--act-ckpt`` are shorthands for the
overrides ``data.batch_size``, ``data.crop_size``, ``deepspeed.config=zeroS`` (the shipped
``ds_configs/zeroS.json``) and ``model.act_ckpt_encoder`` + ``model.act_ckpt_predictor``.
"""

from __future__ import annotations

import argparse


def _shorthand_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.batch is not None:
        extra.append(f"data.batch_size={args.batch}")
    if args.image_size is not None:
        extra.append(f"data.crop_size={args.image_size}")
    if args.zero_stage is not None:
        extra.append(f"deepspeed.config=zero{args.zero_stage}")
    if args.act_ckpt is not None:
        extra += [
            f"model.act_ckpt_encoder={args.act_ckpt}",
            f"model.act_ckpt_predictor={args.act_ckpt}",
        ]
    return extra


def _handler(args: argparse.Namespace) -> int:
    from ijepa_ds.config import ConfigError, load_config, validate_config
    from ijepa_ds.perf.plan import format_plan, plan

    if args.world_size < 1 or args.gpu_mem <= 0:
        raise ConfigError(
            f"--world-size must be >= 1 and --gpu-mem > 0, got {args.world_size} and {args.gpu_mem}"
        )
    if not 0.0 <= args.headroom < 1.0:
        raise ConfigError(f"--headroom must be in [0, 1), got {args.headroom}")
    cfg = load_config(args.config, list(args.overrides) + _shorthand_overrides(args))
    validate_config(cfg, world_size=args.world_size)
    try:
        result = plan(cfg, args.world_size, args.gpu_mem, args.headroom, args.config, args.device)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    print(format_plan(result), end="")
    return 0 if result.fits else 1


def configure_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="preset name or YAML path")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. data.batch_size=64",
    )
    parser.add_argument("--world-size", type=int, required=True, help="number of GPUs (ranks)")
    parser.add_argument("--gpu-mem", type=float, required=True, help="memory per GPU in GiB")
    parser.add_argument("--batch", type=int, default=None, help="per-GPU micro-batch")
    parser.add_argument("--image-size", type=int, default=None, help="crop size in pixels")
    parser.add_argument(
        "--zero-stage", type=int, default=None, help="ZeRO stage 0-3 (ds_configs/zeroS.json)"
    )
    parser.add_argument(
        "--act-ckpt",
        type=int,
        default=None,
        help="checkpoint every k-th encoder and predictor block",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: plan CPU ranks (--gpu-mem is then each rank's share of RAM); host memory "
        "is the device there, so the process itself and rank 0's target copy at a save count",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        default=0.1,
        help="fraction of GPU memory kept free for CUDA context, NCCL and fragmentation",
    )
    parser.set_defaults(func=_handler)
