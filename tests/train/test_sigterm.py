"""SIGTERM / SIGINT to a live 2-rank ``ijepa-ds train``: every rank saves at the next step
boundary, rank 0 ends with one line naming the checkpoint, the ranks exit 75, and
``--resume auto`` continues with exactly the losses of an uninterrupted run (fp32)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ijepa_ds.checkpoint.layout import complete_checkpoints, read_latest
from tests.helpers import REPO, LiveJob, cpu_env, train_command, without_noise
from tests.reliability.faults import jsonl_losses
from tests.train.equivalence_worker import OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
STEPS = 10
# 512 samples: 32 steps per epoch, so every stop is mid-epoch.
RUN = [o for o in OVERRIDES if "max_steps" not in o and "synthetic_size" not in o] + [
    "data.synthetic_size=512", f"schedule.max_steps={STEPS}", "checkpoint.every_steps=0",
    "checkpoint.save_at_end=true", "logging.jsonl=true", "logging.log_every=1",
]  # fmt: skip
STOPPED = re.compile(
    rf"^ijepa-ds: stopped by (SIG\w+) at step (\d+) of {STEPS}; checkpoint saved to (\S+); "
    r"continue with --resume auto$",
    re.M,
)


def _args(root: Path, name: str, *extra: str) -> list[str]:
    return ["--config", "fmnist_tiny", *RUN, f"logging.output_dir={root}",
            f"logging.run_name={name}", *extra]  # fmt: skip


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(2, *args), env=cpu_env(), cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """step -> loss of the uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    proc = _train(*_args(root, "full"))
    assert proc.returncode == 0, without_noise(proc.stderr)[-6000:]
    losses = jsonl_losses(root / "full")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _interrupt(root: Path, sig: int, to_ranks_only: bool) -> tuple[LiveJob, int, float]:
    """Start the run, send ``sig`` once it has logged 2 steps; (job, exit code, seconds from
    the signal to the job's end)."""
    job = LiveJob(train_command(2, *_args(root, "job")))
    metrics = root / "job" / "metrics.jsonl"
    job.wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 180, "step 2")
    (job.signal_ranks if to_ranks_only else job.signal_group)(sig)
    sent = time.monotonic()
    code = job.finish(timeout=120)
    return job, code, time.monotonic() - sent


def _stopped_line(job: LiveJob, name: str, run_dir: Path) -> int:
    """The one line (once, from rank 0); checks the checkpoint it names. Returns its step."""
    lines = STOPPED.findall(job.output)
    assert len(lines) == 1, job.tail()
    sig, step, folder = lines[0]
    step = int(step)
    assert sig == name and 2 <= step < STEPS
    assert Path(folder) == run_dir / "checkpoints" / f"step_{step:08d}"
    assert complete_checkpoints(run_dir) == [Path(folder)] and read_latest(run_dir) == Path(folder)
    assert json.loads((Path(folder) / "COMPLETE").read_text())["reason"] == name
    assert str(REPO / "ijepa_ds") not in job.output, "a traceback from our code"
    return step


def test_sigterm_to_the_job_saves_and_resume_auto_continues_bit_identically(tmp_path, reference):
    # SIGTERM to every process at once (scancel, a container stop); torchrun forwards it
    # to the ranks a second time, within the grace time.
    job, _, seconds = _interrupt(tmp_path, signal.SIGTERM, to_ranks_only=False)
    assert seconds < 30, job.tail()
    run_dir = tmp_path / "job"
    step = _stopped_line(job, "SIGTERM", run_dir)
    before = jsonl_losses(run_dir)
    assert sorted(before) == list(range(1, step + 1))

    resumed = _train(*_args(tmp_path, "job"), "--resume", "auto")
    assert resumed.returncode == 0, without_noise(resumed.stderr)[-6000:]
    logged = [int(s) for s in re.findall(rf"step (\d+)/{STEPS} \|", resumed.stdout)]
    assert logged == list(range(step + 1, STEPS + 1))  # continued, not restarted
    after = {s: v for s, v in jsonl_losses(run_dir).items() if s > step}
    assert {**before, **after} == reference  # exact float equality


def test_sigint_to_the_ranks_exits_75_on_each_after_saving(tmp_path, reference):
    # What torchrun does with a Ctrl-C it receives: the ranks get one SIGINT each.
    job, code, seconds = _interrupt(tmp_path, signal.SIGINT, to_ranks_only=True)
    assert code != 0 and seconds < 30, job.tail()
    assert job.output.count("exitcode  : 75") == 2, job.tail()  # torchrun's summary, per rank
    run_dir = tmp_path / "job"
    step = _stopped_line(job, "SIGINT", run_dir)
    losses = jsonl_losses(run_dir)
    assert losses == {s: reference[s] for s in range(1, step + 1)}
