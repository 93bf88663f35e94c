"""One real 2-rank run whose checkpoints the file-level fault tests damage (on copies)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.reliability.faults import Outcome, run_worker

# Position 21 lies in optimizer step 2 (global batch 16); its NaN loss is dropped (skip mode),
# so step 2's checkpoint is the one written after a non-finite loss.
POISONED = 21


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Outcome]:
    """(run folder with complete checkpoints step_00000001 and step_00000002, the job)."""
    tmp = tmp_path_factory.mktemp("trained")
    overrides = ("schedule.max_steps=2", "checkpoint.every_steps=1", "loss.on_nonfinite=skip")
    job = run_worker(tmp, "trained", "base", f"poison:{POISONED}", overrides=overrides)
    assert job.returncode == 0, job.describe()
    return tmp / "runs" / "base", job


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run folder, free to damage."""
    copy = tmp_path / "runs" / "base"
    shutil.copytree(trained_run[0], copy)
    return copy
