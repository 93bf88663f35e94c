"""The ``best`` alias keeps its held-out loss, so a resumed run does not move it to a worse one."""

from __future__ import annotations

import pytest

from ijepa_ds.checkpoint.layout import (
    BEST_VALUE,
    checkpoints_dir,
    read_best,
    resumed_best,
    step_folder_name,
    write_best,
)

pytestmark = pytest.mark.fast


def _folder(run_dir, step: int):
    folder = checkpoints_dir(run_dir) / step_folder_name(step)
    folder.mkdir(parents=True)
    return folder


def test_round_trip(tmp_path):
    write_best(tmp_path, _folder(tmp_path, 468), "val/loss", 0.0483)
    assert read_best(tmp_path).name == step_folder_name(468)
    assert resumed_best(tmp_path, 936, "val/loss") == 0.0483
    assert resumed_best(tmp_path, 468, "val/loss") == 0.0483  # resumed from best itself


def test_no_best_yet_compares_from_scratch(tmp_path):
    assert resumed_best(tmp_path, 100, "val/loss") is None


def test_best_past_the_resume_point_is_ignored(tmp_path):
    write_best(tmp_path, _folder(tmp_path, 936), "val/loss", 0.04)
    assert resumed_best(tmp_path, 468, "val/loss") is None  # steps 469.. are redone


def test_pointer_without_its_value_compares_from_scratch(tmp_path):
    write_best(tmp_path, _folder(tmp_path, 468), "val/loss", 0.05)
    (checkpoints_dir(tmp_path) / "best").write_text(step_folder_name(936) + "\n")  # older code
    assert resumed_best(tmp_path, 1000, "val/loss") is None


def test_damaged_value_file_names_itself(tmp_path):
    write_best(tmp_path, _folder(tmp_path, 468), "val/loss", 0.05)
    (checkpoints_dir(tmp_path) / BEST_VALUE).write_text("{not json")
    with pytest.raises(ValueError, match=BEST_VALUE):
        resumed_best(tmp_path, 1000, "val/loss")


def test_another_metric_compares_from_scratch(tmp_path):
    write_best(tmp_path, _folder(tmp_path, 468), "val/loss", 0.05)
    assert resumed_best(tmp_path, 1000, "health/knn_top1") is None  # best_metric changed
