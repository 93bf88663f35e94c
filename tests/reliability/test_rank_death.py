"""A rank dies (SIGKILL) or hangs mid-step: the job ends within a bounded time with a clear
error, and ``--resume auto`` continues from the last complete checkpoint."""

from __future__ import annotations

import pytest

from tests.reliability.faults import checkpoint_names, jsonl_losses, latest_name, run_worker

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
EVERY = 2  # checkpoint interval (steps)
RUN = ("schedule.max_steps=6", f"checkpoint.every_steps={EVERY}", "logging.jsonl=true",
       "logging.log_every=1")  # fmt: skip


def test_killed_rank_ends_the_job_and_resume_loses_at_most_the_interval(tmp_path):
    # Rank 1 is killed during optimizer step 4: steps 1-3 finished, step 2 was saved.
    killed = run_worker(tmp_path, "killed", "job", "kill-step:1:4", overrides=RUN, timeout=240)
    assert killed.returncode != 0, killed.describe()
    # torchrun's agent sees the dead rank, tears the other down and names the culprit.
    assert "Signal 9 (SIGKILL)" in killed.stderr and "rank      : 1" in killed.stderr
    assert killed.seconds < 120, "the surviving rank must not wait for a process-group timeout"
    run_dir = tmp_path / "runs" / "job"
    assert checkpoint_names(run_dir) == ["step_00000002"]
    assert latest_name(run_dir) == "step_00000002"
    before = jsonl_losses(run_dir)
    assert sorted(before) == [1, 2, 3]

    resumed = run_worker(tmp_path, "resumed", "job", resume="auto", overrides=RUN)
    assert resumed.returncode == 0, resumed.describe()
    for rank in (0, 1):
        assert resumed.ranks[rank]["start_step"] == 2  # lost 1 finished step <= EVERY
        assert len(resumed.ranks[rank]["losses"]) == 4  # steps 3..6
    # Step 3 is redone exactly as before the crash (state, not replay).
    assert resumed.ranks[0]["losses"][0] == before[3]
    assert checkpoint_names(run_dir) == ["step_00000004", "step_00000006"]  # keep_last=2


def test_hung_rank_fails_the_job_after_the_configured_timeout(tmp_path):
    # Rank 1 stops answering in step 2; rank 0 waits in a collective for 6 s, not 10 minutes.
    hung = run_worker(
        tmp_path,
        "hung",
        "hang",
        "hang-step:1:2",
        overrides=("schedule.max_steps=3",),
        env={"IJEPA_DS_DIST_TIMEOUT_MINUTES": "0.1"},
        timeout=240,
    )
    assert hung.returncode != 0, hung.describe()
    # gloo's own message, with the configured 0.1 minutes.
    assert "Timed out waiting 6000ms" in hung.ranks[0]["error"], hung.ranks[0]
    assert hung.seconds < 150, hung.describe()
