"""Helpers for tests that start real processes (torchrun ranks, the CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_env(**extra: str) -> dict[str, str]:
    """Environment for CPU DeepSpeed subprocesses: one OpenMP thread, CPU accelerator, the repo
    on the path, and no launcher variables inherited from an outer job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    # PYTHONFAULTHANDLER: a rank that dies on a signal (SIGABRT from C++) prints where it was.
    env.update(
        OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1"
    )
    env.update(extra)
    return env


def torchrun(nproc: int, script: str | Path, *args: str, timeout: float = 600, cwd=None):
    """``torchrun --standalone --nproc_per_node nproc script args``; returns CompletedProcess."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(script),
        *args,
    ]
    return subprocess.run(
        cmd, env=cpu_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


_NOISE = ("is deprecated. Please use", "  return func(*args, **kwargs)")


def without_noise(text: str) -> str:
    """``text`` less torch's per-call deprecation warnings, which would fill a failure's tail."""
    lines = text.splitlines()
    return "\n".join(line for line in lines if not any(n in line for n in _NOISE))


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{without_noise(proc.stderr)[-8000:]}"
    )
