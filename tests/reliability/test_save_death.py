"""A rank dies while the checkpoint shards are being written: the half-written temporary folder
is never taken as a checkpoint, ``latest`` still names the previous one, and auto-resume
continues from it."""

from __future__ import annotations

import pytest

from ijepa_ds.checkpoint.layout import is_complete
from tests.reliability.faults import checkpoint_names, latest_name, run_worker

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
RUN = ("schedule.max_steps=5", "checkpoint.every_steps=2")


def test_death_during_save_keeps_the_previous_checkpoint(tmp_path):
    # Rank 1 writes its first DeepSpeed file of the step-4 save, then is killed.
    died = run_worker(tmp_path, "died", "job", "kill-save:1:4", overrides=RUN, timeout=240)
    assert died.returncode != 0, died.describe()
    assert "Signal 9 (SIGKILL)" in died.stderr and "rank      : 1" in died.stderr
    checkpoints = tmp_path / "runs" / "job" / "checkpoints"
    partial = checkpoints / ".tmp-step_00000004"
    assert partial.is_dir() and not is_complete(partial)
    assert list((partial / "engine").glob("zero_pp_rank_1_*_optim_states.pt"))  # written, then died
    assert not (checkpoints / "step_00000004").exists()
    assert checkpoint_names(checkpoints.parent) == ["step_00000002"]
    assert latest_name(checkpoints.parent) == "step_00000002"

    resumed = run_worker(tmp_path, "resumed", "job", resume="auto", overrides=RUN)
    assert resumed.returncode == 0, resumed.describe()
    assert [resumed.ranks[r]["start_step"] for r in (0, 1)] == [2, 2]
    assert len(resumed.ranks[0]["losses"]) == 3  # steps 3, 4, 5
    # The step-4 save was redone from scratch; no temporary folder is left behind.
    assert checkpoint_names(checkpoints.parent) == ["step_00000004", "step_00000005"]
    assert not list(checkpoints.glob(".tmp-*"))
