"""Activation checkpointing: memory and step time of each implementation, with and without
CPU offload, side by side in one run.

Run from the repository root (one rank)::

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 1 \\
        bench/act_ckpt.py --image-size 224 --batch 8 --repeats 4 --out bench/results/act_ckpt.md

Every variant is a real trainer (``build_trainer``; the ViT-S/16 student of
``bench/fast_paths.py``, fp32, ZeRO-1) with every encoder and predictor block checkpointed
(``model.act_ckpt_encoder=1 model.act_ckpt_predictor=1``), or none for the baseline. Timing:
the loop's own ``micro_step`` plus the EMA update, the same pre-loaded batch for every variant
in each round, variants interleaved (``common.interleaved``). Memory, on two more batches per
variant:
- held after the forward: the bytes the forward leaves allocated (what autograd keeps for the
  backward, the loss and the target features);
- step peak: the peak of live bytes above the level at the step's start, over forward,
  backward and optimizer step (temporaries included).
On a CPU device these are the CPU allocator's events (``memory_probe.allocation_peak``); on a
GPU the device allocator's (``torch.cuda.memory_allocated``), which is what offload lowers.
On a CPU device offload to the CPU cannot lower anything (the tensors already live in host
memory): its rows show the overhead only, and DeepSpeed's offload, which needs a GPU, is
refused by ``apply_activation_checkpointing`` and listed as such.
"""

from __future__ import annotations

import argparse

import common  # sets OMP_NUM_THREADS, puts the repo on sys.path
import torch
from fast_paths import bench_overrides, make_step
from memory_probe import allocation_peak

from ijepa_ds.backend.act_ckpt import configure_deepspeed_checkpointing
from ijepa_ds.backend.ds_config import build_ds_config
from ijepa_ds.config import load_config
from ijepa_ds.train.loop import micro_step
from ijepa_ds.train.step import compute_loss, move_batch
from ijepa_ds.train.trainer import build_loader, build_trainer

BASELINE = "none"
# name: (act_ckpt_impl, act_ckpt_cpu_offload); None = no checkpointing.
VARIANTS = {
    BASELINE: None,
    "torch": ("torch", False),
    "torch + offload": ("torch", True),
    "deepspeed": ("deepspeed", False),
    "deepspeed + offload": ("deepspeed", True),
    "fairscale": ("fairscale", False),
    "fairscale + offload": ("fairscale", True),
}
MIB = 2**20


def variant_overrides(setting) -> list[str]:
    if setting is None:
        return []
    impl, offload = setting
    return [
        "model.act_ckpt_encoder=1",
        "model.act_ckpt_predictor=1",
        f"model.act_ckpt_impl={impl}",
        f"model.act_ckpt_cpu_offload={str(offload).lower()}",
    ]


def _device_bytes(fn, device: torch.device) -> tuple[int, int, object]:
    """(peak live bytes above the start, net bytes at the end, fn's result) of ``fn()``."""
    if device.type != "cuda":
        return allocation_peak(fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start, torch.cuda.memory_allocated() - start, result


def measure_memory(trainer, batches: list, step: int) -> tuple[int, int]:
    """(bytes held after the forward of batches[step], peak bytes of the step on the next one)."""
    cfg, engine = trainer.cfg, trainer.engine
    imgs, _, _, masks_enc, masks_pred = move_batch(batches[step], trainer.device)

    def forward():
        return compute_loss(
            engine, trainer.target, imgs, masks_enc, masks_pred, cfg.loss.kind, cfg.optim.precision
        )[0]

    _, held, loss = _device_bytes(forward, trainer.device)
    engine.backward(loss)
    engine.step()
    del loss
    next_step = lambda: micro_step(trainer, batches[step + 1], step + 1)  # noqa: E731
    peak, _, _ = _device_bytes(next_step, trainer.device)
    return held, peak


def for_variant(setting, fn):
    """``fn`` that first sets DeepSpeed's process-wide offload flag to the variant's."""
    if setting is None or setting[0] != "deepspeed":
        return fn

    def run(*args):
        configure_deepspeed_checkpointing(cpu_offload=setting[1])
        return fn(*args)

    return run


def build_variants(args, env, rounds: int) -> tuple[dict, dict, list]:
    """Trainers of the variants that can run here, refusals of the others, shared batches."""
    base = bench_overrides(args.image_size, args.batch, env.world_size, rounds + 2)
    trainers, refused, batches = {}, {}, None
    for name, setting in VARIANTS.items():
        cfg = load_config("fmnist_tiny", base + variant_overrides(setting))
        try:
            trainers[name] = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
        except ValueError as err:  # DeepSpeed's offload on a CPU device
            refused[name] = str(err)
            continue
        if batches is None:  # the same images and masks for every variant
            batches = list(build_loader(trainers[name], 0))[: rounds + 2]
    return trainers, refused, batches


def run(args, env) -> str:
    rounds = args.repeats + 1  # one warm-up round
    trainers, refused, batches = build_variants(args, env, rounds)
    steps = {n: for_variant(VARIANTS[n], make_step(t, batches, [0])) for n, t in trainers.items()}
    times = common.interleaved(steps, args.repeats)
    memory = {
        n: for_variant(VARIANTS[n], measure_memory)(t, batches, rounds) for n, t in trainers.items()
    }
    return format_table(args, env, trainers, refused, times, memory, batches)


def format_table(args, env, trainers, refused, times, memory, batches) -> str:
    device = next(iter(trainers.values())).device
    k_enc = sum(b[3][0].shape[1] for b in batches) / len(batches)
    k_pred = sum(b[4][0].shape[1] for b in batches) / len(batches)
    lines = [
        f"ViT-S/16 student (width 384, depth 12, 6 heads; predictor 384 x 6), "
        f"{args.image_size} px ({(args.image_size // 16) ** 2} patches), batch {args.batch}, "
        f"{env.world_size} rank(s), fp32, ZeRO-1, device {device.type}; mean tokens per mask "
        f"K_enc {k_enc:.1f}, K_pred {k_pred:.1f}. Checkpointed variants: all 12 encoder and 6 "
        f"predictor blocks. {args.repeats} interleaved rounds after 1 warm-up round; memory "
        f"from one more forward and one more step per variant ({device.type} allocator).",
        "",
        "| variant | held after forward MiB | vs none | step peak MiB | vs none | median CPU "
        "s/step | median wall s/step | CPU time / none's, median (min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base_held, base_peak = memory[BASELINE]
    base_cpu = [c for _, c in times[BASELINE]]
    for name in VARIANTS:
        if name in refused:
            lines.append(f"| {name} | not run (refused, below) | | | | | | |")
            continue
        held, peak = memory[name]
        wall, cpu = [w for w, _ in times[name]], [c for _, c in times[name]]
        ratio = common.ratio_spread(cpu, base_cpu)  # > 1: slower than no checkpointing
        lines.append(
            f"| {name} | {held / MIB:.0f} | {held / base_held:.3f} | {peak / MIB:.0f} | "
            f"{peak / base_peak:.3f} | {common.median(cpu):.2f} | {common.median(wall):.2f} | "
            f"{ratio[0]:.3f} ({ratio[1]:.3f}-{ratio[2]:.3f}) |"
        )
    lines += ["", *(f"{name} refused: {why}" for name, why in refused.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    common.run_on_ranks(lambda env: run(args, env), args.out)


if __name__ == "__main__":
    main()
