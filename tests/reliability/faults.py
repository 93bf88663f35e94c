"""Shared by the reliability tests: run ``fault_worker.py`` under torchrun and read its results."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ijepa_ds.checkpoint.layout import complete_checkpoints, read_latest
from tests.helpers import cpu_env

WORKER = Path(__file__).with_name("fault_worker.py")


@dataclass
class Outcome:
    """A finished torchrun job: exit code, output, wall time, and each rank's result file."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    ranks: dict[int, dict]

    def describe(self) -> str:
        return f"exit {self.returncode}\n{self.stdout[-3000:]}\n{self.stderr[-6000:]}"


def run_worker(
    tmp: Path,
    tag: str,
    run_name: str,
    fault: str = "none",
    resume: str = "-",
    overrides: tuple[str, ...] = (),
    nproc: int = 2,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Outcome:
    """``torchrun --nproc_per_node nproc fault_worker.py`` on the tiny config in ``tmp/runs``."""
    prefix = tmp / tag
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", str(WORKER), str(prefix), str(tmp / "runs"), run_name,
        fault, resume, *overrides,
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(
        cmd, env=cpu_env(**(env or {})), capture_output=True, text=True, timeout=timeout
    )
    seconds = time.monotonic() - started
    ranks = {}
    for rank in range(nproc):
        path = Path(f"{prefix}.rank{rank}.json")
        if path.is_file():
            ranks[rank] = json.loads(path.read_text())
    return Outcome(proc.returncode, proc.stdout, proc.stderr, seconds, ranks)


def checkpoint_names(run_dir: Path) -> list[str]:
    return [p.name for p in complete_checkpoints(run_dir)]


def latest_name(run_dir: Path) -> str | None:
    latest = read_latest(run_dir)
    return None if latest is None else latest.name


def jsonl_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from ``metrics.jsonl`` (needs ``logging.jsonl=true``, ``log_every=1``)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}
