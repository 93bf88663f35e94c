"""``ijepa-ds launch local|slurm``: start training ranks here or submit them to SLURM.

The options are parsed here, into the typed ``LocalLaunch`` / ``SlurmLaunch`` that
``ijepa_ds.launch`` runs; the trainer's own arguments come from ``ijepa-ds train``'s parser.
``local_main`` and ``slurm_main`` are the same commands as stand-alone entry points
(``launchers/submit_slurm.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence

from ijepa_ds.cli.train_cmd import add_train_arguments, train_args_from
from ijepa_ds.launch.local import LAUNCHERS, LOG_LEVELS, LocalLaunch, run_local
from ijepa_ds.launch.slurm import SBATCH_PASSTHROUGH, SlurmLaunch, run_slurm


def add_local_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``launch local`` followed by the trainer's own arguments."""
    group = parser.add_argument_group("launcher")
    group.add_argument("--nproc-per-node", "--nproc", type=int, default=1, help="ranks per node")
    group.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    group.add_argument("--nnodes", type=int, default=1, help="torchrun: number of nodes")
    group.add_argument("--node-rank", type=int, default=0, help="torchrun: this node's index")
    group.add_argument("--master-addr", default="127.0.0.1", help="address of node 0")
    group.add_argument(
        "--master-port", type=int, default=0, help="rendezvous port; 0 = a free one (one node)"
    )
    group.add_argument("--hostfile", default=None, help="deepspeed: 'host slots=N' per line")
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="WARNING",
        help="verbosity of the launcher and torch.distributed (LOGLEVEL, TORCH_CPP_LOG_LEVEL, "
        "NCCL_DEBUG; values already set in the environment win)",
    )
    group.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    return add_train_arguments(parser)


def add_slurm_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``launch slurm`` followed by the trainer's own arguments."""
    g = parser.add_argument_group("SLURM resources")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--tasks-per-node", type=int, default=1, help="ranks per node (= GPUs)")
    g.add_argument("--gpus-per-node", type=int, default=0)
    g.add_argument("--cpus-per-task", type=int, default=1)
    g.add_argument("--mem", default="", help="memory per node, e.g. 64G")
    g.add_argument("--time", default="60", help="time limit: minutes, H:M:S or D-H:M:S")
    for name in SBATCH_PASSTHROUGH:
        g.add_argument(f"--{name}", default="")
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="any other sbatch option, e.g. --sbatch reservation=r1 --sbatch exclusive",
    )
    j = parser.add_argument_group("jobs")
    j.add_argument("--job-name", default="ijepa")
    j.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="one job per value (grid over several --sweep), submitted as one array; "
        "KEY 'config' sweeps the preset",
    )
    j.add_argument(
        "--slurm-dir",
        default="",
        help="job logs and code copies (default <logging.output_dir>/slurm)",
    )
    j.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        help="seconds before the time limit at which the job saves and requeues",
    )
    j.add_argument(
        "--max-requeues", type=int, default=3, help="time-outs/preemptions a job may requeue after"
    )
    j.add_argument("--wait", action="store_true", help="wait for the jobs and report")
    j.add_argument("--dry-run", action="store_true", help="print the sbatch script only")
    return add_train_arguments(parser)


def launch_options(cls: type, args: argparse.Namespace):
    """``cls`` (``LocalLaunch`` or ``SlurmLaunch``) from a namespace parsed with its
    ``add_*_arguments``: every field but ``train`` by name (lists as tuples), ``train`` from
    the trainer's arguments."""
    values = {}
    for field in dataclasses.fields(cls):
        if field.name != "train":
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(train=train_args_from(args), **values)


def _local(args: argparse.Namespace) -> int:
    return run_local(launch_options(LocalLaunch, args))


def _slurm(args: argparse.Namespace) -> int:
    return run_slurm(launch_options(SlurmLaunch, args))


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


AddArguments = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
Run = Callable[[argparse.Namespace], int]


def launcher_main(
    prog: str, add_arguments: AddArguments, run: Run, argv: Sequence[str] | None = None
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the parser ``add_arguments`` builds and
    return ``run(args)``; a ``ConfigError`` is printed as ``error: ...`` and gives 2, as
    ``ijepa-ds`` itself does."""
    from ijepa_ds.config import ConfigError

    parser = add_arguments(argparse.ArgumentParser(prog=prog))
    try:
        return run(parser.parse_args(argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def local_main(argv: Sequence[str] | None = None) -> int:
    """``ijepa-ds launch local ARGS`` as a stand-alone entry point."""
    return launcher_main("ijepa-ds launch local", add_local_arguments, _local, argv)


def slurm_main(argv: Sequence[str] | None = None) -> int:
    """``ijepa-ds launch slurm ARGS`` as a stand-alone entry point."""
    return launcher_main("ijepa-ds launch slurm", add_slurm_arguments, _slurm, argv)
