"""``ijepa-ds train``: the trainer's argument parser (shared with ``launch local|slurm``) and
its translation into the typed ``TrainArgs`` that everything below the CLI takes.

Exit codes: 0 finished; 2 configuration or checkpoint error; ``EXIT_RUN_LOCKED`` (3) another
live job holds the run folder, nothing was written; ``EXIT_STOPPED`` (75, ``EX_TEMPFAIL``:
try again later) stopped by SIGTERM or SIGINT after saving a checkpoint, continue with
``--resume auto``. A repeated signal kills the rank at once: 143 (SIGTERM) or 130 (SIGINT).
"""

from __future__ import annotations

import argparse
import signal
import sys

from ijepa_ds.train.args import TrainArgs

EXIT_RUN_LOCKED = 3
EXIT_STOPPED = 75


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


def train_args_from(args: argparse.Namespace) -> TrainArgs:
    """The ``TrainArgs`` held by a namespace parsed with ``add_train_arguments``."""
    return TrainArgs(
        config=args.config,
        overrides=tuple(args.overrides),
        resume=args.resume,
        resume_fallback=args.resume_fallback,
        local_rank=args.local_rank,
    )


def stopped_message(result: dict) -> str:
    """The one line a run stopped by a signal ends with (rank 0)."""
    step = result["start_step"] + len(result["losses"])
    saved = result["checkpoints"][-1] if result["checkpoints"] else "nowhere (no checkpoint)"
    return (
        f"ijepa-ds: stopped by {result['stopped_by']} at step {step} of "
        f"{result['total_steps']}; checkpoint saved to {saved}; continue with --resume auto"
    )


def _exit_undisturbed() -> None:
    """Ignore SIGTERM/SIGINT for the rest of an early exit that every rank takes (nothing is
    left to save). torchrun answers the first rank to exit non-zero with SIGTERM to the
    others, which would turn their exit code into a death by that signal."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _handler(args: argparse.Namespace) -> int:
    from ijepa_ds.backend.comm import shutdown_distributed
    from ijepa_ds.checkpoint.resume import CheckpointError
    from ijepa_ds.checkpoint.run_lock import RunLockedError
    from ijepa_ds.config import ConfigError
    from ijepa_ds.observability.wandb_sink import WandbError
    from ijepa_ds.train.main import run_training

    try:
        result = run_training(train_args_from(args))
    except (CheckpointError, WandbError) as err:
        # Reported like a config error: a clear message naming the file or setting, exit code 2.
        raise ConfigError(str(err)) from err
    except RunLockedError as err:
        _exit_undisturbed()
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_RUN_LOCKED
    if result["stopped_by"] is None:
        shutdown_distributed()
        return 0
    _exit_undisturbed()
    if result["rank"] == 0:
        print(stopped_message(result), file=sys.stderr, flush=True)
    shutdown_distributed()
    return EXIT_STOPPED


def configure_train(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    parser.set_defaults(func=_handler)
