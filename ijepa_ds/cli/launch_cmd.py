"""``ijepa-ds launch local|slurm``: start training ranks here or submit them to SLURM."""

from __future__ import annotations

import argparse

from ijepa_ds.launch.local import add_local_arguments
from ijepa_ds.launch.slurm import add_slurm_arguments


def _local(args: argparse.Namespace) -> int:
    from ijepa_ds.launch.local import run_local

    return run_local(args)


def _slurm(args: argparse.Namespace) -> int:
    from ijepa_ds.launch.slurm import run_slurm

    return run_slurm(args)


def configure_launch(parser: argparse.ArgumentParser) -> None:
    """``launch local`` (torchrun / deepspeed launcher) and ``launch slurm`` (alias ``submit``)."""
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    local = targets.add_parser(
        "local", help="N ranks on this machine via torchrun or the deepspeed launcher"
    )
    add_local_arguments(local).set_defaults(func=_local)
    slurm = targets.add_parser(
        "slurm", aliases=["submit"], help="submit to SLURM through submitit (multi-node, requeue)"
    )
    add_slurm_arguments(slurm).set_defaults(func=_slurm)
