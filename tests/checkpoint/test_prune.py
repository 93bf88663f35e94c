"""``prune_checkpoints``: keep the newest ``keep_last`` complete checkpoints, milestones and
``best``; never touch incomplete folders."""

from __future__ import annotations

import pytest

from ijepa_ds.checkpoint.layout import (
    checkpoints_dir,
    complete_checkpoints,
    step_folder_name,
    step_of,
    write_best,
    write_complete_marker,
)
from ijepa_ds.checkpoint.saver import prune_checkpoints

pytestmark = pytest.mark.fast


def _run(tmp_path, steps, incomplete=()):
    """A run folder with a complete checkpoint per step of ``steps`` (and unfinished ones)."""
    for step in (*steps, *incomplete):
        folder = checkpoints_dir(tmp_path) / step_folder_name(step)
        folder.mkdir(parents=True)
        (folder / "payload").write_bytes(b"x")
        if step not in incomplete:
            write_complete_marker(folder, {"step": step})
    return tmp_path


def _left(run_dir) -> list[int]:
    return [step_of(f) for f in complete_checkpoints(run_dir)]


def test_keeps_the_newest_and_returns_what_it_removed(tmp_path):
    run = _run(tmp_path, [10, 20, 30, 40, 50])
    removed = prune_checkpoints(run, keep_last=2, milestone_every=0)
    assert [step_of(f) for f in removed] == [10, 20, 30]
    assert _left(run) == [40, 50] and not any(f.exists() for f in removed)


def test_milestones_and_best_survive(tmp_path):
    run = _run(tmp_path, [10, 20, 30, 40, 50, 60])
    write_best(run, checkpoints_dir(run) / step_folder_name(30), "knn_top1", 0.5)
    prune_checkpoints(run, keep_last=1, milestone_every=20)
    assert _left(run) == [20, 30, 40, 60]  # 20 and 40 milestones, 30 best, 60 newest


def test_keep_last_zero_keeps_everything(tmp_path):
    run = _run(tmp_path, [1, 2, 3])
    assert prune_checkpoints(run, keep_last=0, milestone_every=0) == []
    assert _left(run) == [1, 2, 3]


def test_incomplete_folders_are_neither_counted_nor_deleted(tmp_path):
    run = _run(tmp_path, [10, 20], incomplete=[30])
    prune_checkpoints(run, keep_last=1, milestone_every=0)
    assert _left(run) == [20]
    assert (checkpoints_dir(run) / step_folder_name(30) / "payload").exists()
