"""``ijepa-ds eval linear|knn|lowshot|visualize SOURCE``: evaluate a target encoder.

SOURCE is a run folder, a step folder, a consolidated ``.pt``/``.safetensors`` file or a
reference ``.pth.tar``. Data and evaluation settings default to the run's ``config.yaml`` when
SOURCE belongs to a run, else to the flags (``--dataset`` is then required). Results go to
``--out`` (default ``<run>/eval``) as ``<action>.json`` + ``<action>.md``; features are cached
under ``<out>/features``. Under ``torchrun`` every rank extracts a shard of the features, rank 0
runs the probe and writes the report.
"""

from __future__ import annotations

import argparse

# Help per action; the names are ijepa_ds.eval.args.ACTIONS (tests/cli checks they agree).
ACTIONS = {
    "linear": "linear probe (lr x wd sweep on a train/val split, test top-1)",
    "knn": "weighted k-NN on cosine similarity (DINO protocol)",
    "lowshot": "linear probe + k-NN on a class-balanced fraction of the train labels",
    "visualize": "PCA of patch features as RGB maps next to the images (PNG)",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="run folder, step folder, .pt, .safetensors or reference .pth.tar",
    )
    p.add_argument(
        "--dataset",
        choices=("fashion_mnist", "image_folder", "synthetic"),
        help="default: the run's data.dataset",
    )
    p.add_argument("--data-root", default=None, help="default: the run's data.root")
    p.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="eval crop; default: the run's data.crop_size, else the encoder's size",
    )
    p.add_argument(
        "--resize-size",
        type=int,
        default=None,
        help="short side before the center crop; default: crop size for "
        "fashion_mnist (whole image), crop * 256/224 otherwise",
    )
    p.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean")
    p.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std")
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="synthetic dataset only: train images (test: a quarter)",
    )
    p.add_argument("--out", default=None, help="report folder; default: <run folder>/eval")
    p.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads (only for checkpoints that do not record them)",
    )
    p.add_argument(
        "--pos-interp",
        choices=("sincos", "bicubic"),  # ijepa_ds.eval.args.POS_INTERP (tests/cli checks)
        default=None,
        help="positions when --crop-size gives another patch grid than training: sincos "
        "regenerates the fixed table for the new grid, bicubic resizes the trained one "
        "(keeps the range of positions seen in training); default: sincos",
    )
    p.add_argument(
        "--pool",
        choices=("avg", "last4", "grid2", "tokens"),  # ijepa_ds.eval.features.POOLS (tests/cli)
        default=None,
        help="features: avg, last4 or grid2 (patch-averaged), or tokens (every last-layer "
        "token, fp16, knn only); default: the run's eval.feature_pool",
    )
    p.add_argument("--batch-size", type=int, default=None, help="extraction batch per rank")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--cache-dir", default=None, help="feature cache; default: <out>/features")
    p.add_argument("--no-cache", action="store_true", help="do not read or write features")
    p.add_argument("--seed", type=int, default=0, help="probe split/init and subset seed")


def _add_probe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="default: eval.linear_lrs")
    p.add_argument("--wds", type=float, nargs="+", default=None, help="default: eval.linear_wds")
    p.add_argument("--epochs", type=int, default=None, help="default: eval.linear_epochs")
    p.add_argument("--val-every", type=int, default=None, help="default: eval.val_every_epochs")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of train")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--probe-batch-size", type=int, default=256, help="0 = full batch")
    p.add_argument("--no-batchnorm", action="store_true", help="no BatchNorm before the head")


def _add_knn(p: argparse.ArgumentParser, many: bool) -> None:
    p.add_argument(
        "--k",
        type=int,
        nargs="+" if many else None,
        default=None,
        help="neighbours; default: eval.knn_k",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="vote temperature; default: eval.knn_temperature",
    )


def configure_eval(parser: argparse.ArgumentParser) -> None:
    """Subcommands linear, knn, lowshot and visualize; ``func`` dispatches on the action."""
    actions = parser.add_subparsers(dest="eval_action", required=True, metavar="ACTION")
    for name, help_text in ACTIONS.items():
        p = actions.add_parser(name, help=help_text, description=help_text)
        _add_common(p)
        if name in ("linear", "lowshot"):
            _add_probe(p)
        if name in ("knn", "lowshot"):
            _add_knn(p, many=name == "knn")
        if name == "lowshot":
            p.add_argument(
                "--fractions",
                type=float,
                nargs="+",
                default=None,
                help="label fractions per class; default: eval.low_shot_fractions",
            )
            p.add_argument(
                "--seeds", type=int, nargs="+", default=None, help="subset seeds (default: --seed)"
            )
        if name == "visualize":
            p.add_argument("--split", choices=("train", "test"), default="test")
            p.add_argument("--num-images", type=int, default=16)
            p.add_argument(
                "--upscale",
                type=int,
                default=None,
                help="pixel zoom; default: up to about 112 px per image",
            )
            p.add_argument("--pairs-per-row", type=int, default=4)
    parser.set_defaults(func=_handler)


def eval_args_from(args: argparse.Namespace):
    """The ``EvalArgs`` of a namespace parsed by ``configure_eval`` (lists as tuples; the
    options an action does not have keep their defaults; lowshot's single ``--k`` as a
    one-item tuple)."""
    import dataclasses

    from ijepa_ds.eval.args import EvalArgs

    values = {"action": args.eval_action}
    for field in dataclasses.fields(EvalArgs):
        if field.name != "action" and hasattr(args, field.name):
            value = getattr(args, field.name)
            if isinstance(value, int) and field.name == "k":
                value = (value,)
            values[field.name] = tuple(value) if isinstance(value, list) else value
        if values.get(field.name, ()) is None and field.default == ():
            values[field.name] = ()
    return EvalArgs(**values)


def _handler(args: argparse.Namespace) -> int:
    from ijepa_ds.eval.run import run_eval_command

    return run_eval_command(eval_args_from(args))
