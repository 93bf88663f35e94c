"""``ijepa-ds launch local``: start the trainer's ranks on this machine (or on a few machines
without SLURM) through ``torchrun`` (default) or the ``deepspeed`` launcher.

::

    ijepa-ds launch local --nproc-per-node 2 --config fmnist_tiny schedule.max_steps=5
    ijepa-ds launch local --launcher deepspeed --nproc-per-node 8 --config vit_h14_in1k

A few nodes without SLURM:

- torchrun: run the same command on every node with ``--nnodes N --node-rank I
  --master-addr HOST0 --master-port PORT`` (HOST0 reachable from all nodes, PORT free there);
- deepspeed: ``--launcher deepspeed --hostfile hosts.txt`` on the first node only; the file
  has one ``hostname slots=GPUS`` line per node and the launcher reaches the others by
  passwordless ssh (pdsh), with the same checkout and environment on each.

The trainer's arguments (``--config``, overrides, ``--resume``) are those of ``ijepa-ds
train`` (``TrainArgs``, parsed by the CLI with the trainer's own parser); the config is
validated for the launch's world size before any process starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from ijepa_ds.train.args import TrainArgs

LAUNCHERS = ("torchrun", "deepspeed")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LocalLaunch:
    """``launch local``: how many ranks where, through which launcher, running ``train``.

    nproc_per_node ranks on each of nnodes nodes (this one is node_rank); master_addr and
    master_port are node 0's rendezvous (port 0: a free one, one node only); hostfile is the
    deepspeed launcher's ``host slots=N`` file; log_level sets the launcher's and
    torch.distributed's verbosity; dry_run prints the command and starts nothing.
    """

    train: TrainArgs
    nproc_per_node: int = 1
    launcher: str = "torchrun"
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    hostfile: str | None = None
    log_level: str = "WARNING"
    dry_run: bool = False


def _check(args: LocalLaunch) -> None:
    from ijepa_ds.config import ConfigError

    if args.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {args.launcher!r}: expected one of {LAUNCHERS}")
    if args.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level {args.log_level!r}: expected one of {LOG_LEVELS}")
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise ConfigError("--nproc-per-node and --nnodes must be >= 1")
    if not 0 <= args.node_rank < args.nnodes:
        raise ConfigError(f"--node-rank {args.node_rank} is outside [0, --nnodes {args.nnodes})")
    if args.nnodes > 1 and args.launcher == "deepspeed":
        raise ConfigError("--launcher deepspeed spans nodes with --hostfile, not --nnodes")
    if args.nnodes > 1 and not args.master_port:
        raise ConfigError(
            "--nnodes > 1 needs --master-port (the same free port on every node) and "
            "--master-addr (node 0's address)"
        )
    if args.hostfile and args.launcher != "deepspeed":
        raise ConfigError("--hostfile is read by the deepspeed launcher: add --launcher deepspeed")


def build_command(args: LocalLaunch, master_port: int) -> list[str]:
    """The launcher's command line, running ``python -m ijepa_ds train`` on every rank."""
    trainer = ["ijepa_ds", "train", *args.train.argv()]
    if args.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={args.nproc_per_node}",
            f"--nnodes={args.nnodes}",
            f"--node-rank={args.node_rank}",
            f"--master-addr={args.master_addr}",
            f"--master-port={master_port}",
            "--module",
            *trainer,
        ]
    command = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if args.hostfile:
        command.append(f"--hostfile={args.hostfile}")
    # --no_local_rank: the launcher would put --local_rank=N between "ijepa_ds" and "train",
    # where the top-level parser rejects it; LOCAL_RANK in the environment says the same.
    command += [
        f"--num_gpus={args.nproc_per_node}",
        f"--master_addr={args.master_addr}",
        f"--master_port={master_port}",
        "--no_local_rank",
        "--module",
        *trainer,
    ]
    return command


def launch_env(base: Mapping[str, str], log_level: str) -> dict[str, str]:
    """``base`` plus defaults that are only set when absent.

    OMP_NUM_THREADS=1: N ranks each starting one OpenMP thread per core oversubscribe the
    CPU (one step became 20x slower under load); the deepspeed launcher sets nothing.
    """
    env = dict(base)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("LOGLEVEL", log_level)
    env.setdefault("TORCH_CPP_LOG_LEVEL", "INFO" if log_level == "DEBUG" else log_level)
    env.setdefault("NCCL_DEBUG", "INFO" if log_level in ("DEBUG", "INFO") else "WARN")
    return env


def run_local(args: LocalLaunch) -> int:
    """Validate the config for the launch's world size, then run the launcher; its exit code."""
    from ijepa_ds.config import load_config, validate_config
    from ijepa_ds.distributed import free_port

    _check(args)
    world_size = args.nnodes * args.nproc_per_node
    validate_config(load_config(args.train.config, args.train.overrides), world_size=world_size)
    command = build_command(args, args.master_port or free_port())
    env = launch_env(os.environ, args.log_level)
    print("launching: " + " ".join(command), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(command, env=env).returncode
