"""Helpers for tests that start real processes (torchrun ranks, the CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
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


def torchrun(nproc: int, script: str | Path, *args: str, timeout: float = 600, cwd=None, env=None):
    """``torchrun --standalone --nproc_per_node nproc script args``; returns CompletedProcess.

    ``env``: extra variables on top of ``cpu_env()``.
    """
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
        cmd,
        env=cpu_env(**(env or {})),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
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


def train_command(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node nproc -m ijepa_ds train args`` (the CLI)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "ijepa_ds", "train", *args,
    ]  # fmt: skip


class LiveJob:
    """A job running in its own session (process group, as under a terminal or SLURM), with
    its stdout and stderr collected, merged, as they come."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, cwd=REPO):
        self.proc = subprocess.Popen(
            cmd, env=env or cpu_env(), cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition, timeout: float, what: str) -> None:
        """Poll ``condition()`` until true; fail if the job ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"job ended before {what}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{self.tail()}"
            time.sleep(0.05)

    def signal_group(self, sig: int) -> None:
        """``sig`` to every process of the job at once, as Ctrl-C or ``scancel`` deliver it."""
        os.killpg(self.proc.pid, sig)

    def signal_ranks(self, sig: int) -> None:
        """``sig`` to the launcher's children (torchrun's ranks) only."""
        import psutil

        for child in psutil.Process(self.proc.pid).children():
            child.send_signal(sig)

    def finish(self, timeout: float) -> int:
        """Wait for the job's end (killing its group after ``timeout``); its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"job still running after {timeout} s:\n{self.tail()}") from None
        self._reader.join(10)
        return code

    def tail(self) -> str:
        return without_noise(self.output)[-8000:]


def noisy_features(n: int, seed: int):
    """A FeatureSet of n rows [n, 16] in 5 overlapping classes, so that kNN's k and T change
    the answer (the kNN benches' tests)."""
    import torch

    from ijepa_ds.eval.features import FeatureSet

    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=gen)
    return FeatureSet(torch.eye(5, 16)[y] + 0.9 * torch.randn(n, 16, generator=gen), y)


# A tiny synthetic run for eval tests: 16 px grey images, ViT D 32 depth 4 patch 4 (4x4 grid).
TINY_EVAL_RUN_CONFIG = {
    "data": {
        "dataset": "synthetic",
        "crop_size": 16,
        "normalize_mean": [0.5],
        "normalize_std": [0.25],
        "synthetic_size": 60,
    },
    "model": {
        "name": "vit_tiny",
        "patch_size": 4,
        "in_chans": 1,
        "embed_dim": 32,
        "depth": 4,
        "num_heads": 2,
    },
    "eval": {
        "knn_k": 5,
        "linear_lrs": [0.1],
        "linear_wds": [0.0],
        "linear_epochs": 3,
        "batch_size": 32,
        "low_shot_fractions": [0.5],
    },
}


def write_tiny_eval_run(run: Path, seed: int = 0) -> Path:
    """A run folder as the trainer leaves it: ``TINY_EVAL_RUN_CONFIG`` as config.yaml and one
    complete checkpoint (step 7) of a target encoder initialised with torch seed ``seed``."""
    import torch

    from ijepa_ds.config import config_from_dict, dump_yaml
    from ijepa_ds.models import VisionTransformer

    step = run / "checkpoints" / "step_00000007"
    step.mkdir(parents=True)
    dump_yaml(config_from_dict(TINY_EVAL_RUN_CONFIG), run / "config.yaml")
    torch.manual_seed(seed)
    enc = VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2
    )
    torch.save({"state_dict": enc.state_dict()}, step / "target_encoder.pt")
    (step / "COMPLETE").write_text("{}\n")
    (run / "checkpoints" / "latest").write_text("step_00000007\n")
    return run
