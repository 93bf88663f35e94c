"""The disk fills up during a save: every rank stops with an error naming the path and the OS
error, without hanging; the previous checkpoint stays intact and ``latest`` unchanged.

The checkpoints folder is a real 2.2 MB tmpfs: one checkpoint of the tiny model (1.5 MB)
fits, the second does not. Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped.
"""

from __future__ import annotations

import subprocess

import pytest

from ijepa_ds.checkpoint.resume import verify_readable
from tests.reliability.faults import checkpoint_names, latest_name, run_worker

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture
def tiny_disk(tmp_path):
    """``tmp_path/runs/full/checkpoints`` on a 2.2 MB tmpfs (unmounted afterwards)."""
    folder = tmp_path / "runs" / "full" / "checkpoints"
    folder.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=2200k", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_full_disk_fails_the_save_on_every_rank_and_keeps_the_previous(tmp_path, tiny_disk):
    run = ("schedule.max_steps=3", "checkpoint.every_steps=1")
    job = run_worker(tmp_path, "full", "full", overrides=run, timeout=240)
    assert job.returncode != 0, job.describe()
    assert job.seconds < 150, "a failed save must not leave ranks waiting in a barrier"
    errors = [job.ranks[rank]["error"] for rank in (0, 1)]
    assert errors[0] == errors[1], errors  # every rank learns of it, with the same message
    message = errors[0]
    assert message.startswith("CheckpointSaveError: checkpoint save of step 2 failed on rank")
    assert str(tiny_disk / ".tmp-step_00000002") in message  # where
    assert "No space left on device" in message or "bytes free" in message  # why
    assert f"{tiny_disk / 'step_00000001'} is still the latest checkpoint" in message
    run_dir = tiny_disk.parent
    assert checkpoint_names(run_dir) == ["step_00000001"]
    assert latest_name(run_dir) == "step_00000001"
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["latest", "step_00000001"]
    verify_readable(tiny_disk / "step_00000001")  # intact: every file loads
