"""``ijepa-ds train``: the trainer's argument parser (shared with the launchers)."""

from __future__ import annotations

import argparse


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``ijepa-ds train``; the SLURM and local launchers reuse exactly these."""
    parser.add_argument("--config", required=True, help="preset name or YAML path")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=1e-3"
    )
    parser.add_argument(
        "--resume",
        default="",
        help="'auto' (newest complete checkpoint of the run folder) or a checkpoint folder",
    )
    parser.add_argument(
        "--resume-fallback",
        action="store_true",
        help="if the newest checkpoint cannot be read, resume from the previous complete one",
    )
    # The deepspeed launcher appends --local_rank=N; it must agree with LOCAL_RANK.
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    return parser


def _handler(args: argparse.Namespace) -> int:
    from ijepa_ds.checkpoint.resume import CheckpointError
    from ijepa_ds.config import ConfigError
    from ijepa_ds.distributed import shutdown_distributed
    from ijepa_ds.train.main import run_training

    try:
        run_training(args)
    except CheckpointError as err:
        # Reported like a config error: a clear message naming the file, exit code 2.
        raise ConfigError(str(err)) from err
    shutdown_distributed()
    return 0


def configure_train(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    parser.set_defaults(func=_handler)
