"""Strict distributed set-up: who am I, how many are we, where is the master.

Rank, local rank, world size and master address come from exactly one launcher:

- ``torchrun`` / ``deepspeed`` launcher / submitit-prepared env: ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (the deepspeed launcher also passes
  ``--local_rank``, which must agree with ``LOCAL_RANK``);
- plain ``srun``: ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS`` (``RANK`` is unset there),
  master = first host of ``SLURM_JOB_NODELIST``, port derived from ``SLURM_JOB_ID``;
- nothing at all: one process.

A partial or contradictory environment is an error (``ValueError`` naming the variables), never
a silent fall back to one process: that fall back is how a multi-node job ends up training N
independent copies.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

TORCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_VAR = "IJEPA_DS_DIST_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 10.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "env" (torchrun/deepspeed/submitit), "slurm" or "single"

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``n[1-3,7],gpu5`` -> ``n1``; ``a-b01`` -> ``a-b01``."""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, _, ranges = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def slurm_master_port(job_id: int) -> int:
    """A port in [20000, 40000) derived from the job id, so concurrent jobs on a node differ."""
    return 20000 + job_id % 20000


def _from_torch_vars(env: Mapping[str, str], cli_local_rank: int | None) -> DistEnv:
    missing = [name for name in TORCH_VARS if name not in env]
    world = _int(env, "WORLD_SIZE") if "WORLD_SIZE" in env else None
    if missing and not (world == 1 and set(missing) <= {"MASTER_ADDR", "MASTER_PORT"}):
        present = [name for name in TORCH_VARS if name in env]
        raise ValueError(
            f"partial launcher environment: {', '.join(present)} set but {', '.join(missing)} "
            "missing; start with torchrun, the deepspeed launcher or srun, or unset them all "
            "to run one process"
        )
    rank, local_rank = _int(env, "RANK"), _int(env, "LOCAL_RANK")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    if "LOCAL_WORLD_SIZE" in env and not 0 <= local_rank < _int(env, "LOCAL_WORLD_SIZE"):
        raise ValueError(f"LOCAL_RANK={local_rank} >= LOCAL_WORLD_SIZE={env['LOCAL_WORLD_SIZE']}")
    if cli_local_rank is not None and cli_local_rank != local_rank:
        raise ValueError(f"--local_rank={cli_local_rank} contradicts LOCAL_RANK={local_rank}")
    return DistEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port(),
        launcher="env",
    )


def _from_slurm(env: Mapping[str, str]) -> DistEnv:
    needed = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
    missing = [name for name in needed if name not in env]
    if missing:
        raise ValueError(f"SLURM_PROCID is set but {', '.join(missing)} missing: run under srun")
    world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
    rank = _int(env, "SLURM_PROCID")
    if not 0 <= rank < world:
        raise ValueError(f"SLURM_PROCID={rank} is outside [0, {world})")
    return DistEnv(
        rank=rank,
        local_rank=_int(env, "SLURM_LOCALID"),
        world_size=world,
        master_addr=first_slurm_host(env.get("SLURM_STEP_NODELIST", env["SLURM_JOB_NODELIST"])),
        master_port=slurm_master_port(_int(env, "SLURM_JOB_ID")),
        launcher="slurm",
    )


def detect_dist_env(
    env: Mapping[str, str] | None = None, cli_local_rank: int | None = None
) -> DistEnv:
    """Read the launcher's variables (``os.environ`` by default) into a :class:`DistEnv`."""
    env = os.environ if env is None else env
    if any(name in env for name in TORCH_VARS):
        return _from_torch_vars(env, cli_local_rank)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return _from_slurm(env)
    if cli_local_rank not in (None, 0):
        raise ValueError(f"--local_rank={cli_local_rank} given without a launcher environment")
    return DistEnv(0, 0, 1, "127.0.0.1", free_port(), "single")


def free_port() -> int:
    """An unused TCP port on the loopback interface (single-process runs only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def dist_timeout(env: Mapping[str, str] | None = None) -> timedelta:
    """How long a collective may wait for a silent rank before it fails (finite, > 0).

    ``IJEPA_DS_DIST_TIMEOUT_MINUTES`` (minutes, fractions allowed), 10 minutes by default. A
    rank that dies is noticed by the launcher at once; this bounds the wait for one that hangs
    (a stuck file system, a deadlocked data worker), so the job fails instead of idling.
    """
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_VAR, "")
    if not text:
        return timedelta(minutes=DEFAULT_TIMEOUT_MINUTES)
    try:
        minutes = float(text)
    except ValueError:
        raise ValueError(f"{TIMEOUT_VAR}={text!r} is not a number of minutes") from None
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"{TIMEOUT_VAR}={text!r} must be a finite number of minutes > 0")
    return timedelta(minutes=minutes)


def init_process_group(
    dist_env: DistEnv, backend: str | None = None, timeout: timedelta | None = None
) -> None:
    """Export the resolved variables and start torch's default group (env:// rendezvous).

    ``timeout`` bounds every collective (``dist_timeout()`` when None). Training goes through
    ``backend.comm.init_distributed``, which calls this and then attaches DeepSpeed. A no-op
    when a default group already exists (several runs in one process, as DeepSpeed allows).
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return

    os.environ.update(
        RANK=str(dist_env.rank),
        LOCAL_RANK=str(dist_env.local_rank),
        WORLD_SIZE=str(dist_env.world_size),
        MASTER_ADDR=dist_env.master_addr,
        MASTER_PORT=str(dist_env.master_port),
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(dist_env.local_rank)
    dist.init_process_group(
        backend or default_backend(),
        init_method="env://",
        rank=dist_env.rank,
        world_size=dist_env.world_size,
        timeout=timeout if timeout is not None else dist_timeout(),
    )


def all_reduce_cpu(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """All-reduce a small CPU tensor in place and return it, whatever the backend.

    gloo reduces CPU tensors; NCCL only CUDA ones, so under NCCL the values make a round trip
    through the current GPU. A no-op without a multi-rank process group.
    """
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    kwargs = {} if op is None else {"op": op}
    if dist.get_backend() == "nccl":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, **kwargs)
        tensor.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(tensor, **kwargs)
    return tensor


def _group_devices() -> set[str]:
    """Device types the default process group reduces natively: ``"cpu:gloo,cuda:nccl"`` ->
    {"cpu", "cuda"}; a plain ``"nccl"`` group gives {"cuda"}, ``"gloo"`` {"cpu", "cuda"}."""
    import torch.distributed as dist

    return {part.split(":")[0] for part in dist.get_backend_config().split(",") if ":" in part}


def all_reduce_on_device(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """All-reduce a small tensor in place and return it, on the device where it lives.

    The training loop keeps its running sums on the accelerator so that reading them is the
    only host synchronisation; reducing them there avoids a device-to-host copy before the
    collective. A device the process group cannot reduce (a CPU tensor under NCCL alone, an
    accelerator gloo does not know) takes the CPU path of ``all_reduce_cpu``. A no-op without
    a multi-rank process group.
    """
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    if tensor.device.type in _group_devices():
        dist.all_reduce(tensor, **({} if op is None else {"op": op}))
        return tensor
    if tensor.device.type == "cpu":
        return all_reduce_cpu(tensor, op)
    return tensor.copy_(all_reduce_cpu(tensor.cpu(), op))
