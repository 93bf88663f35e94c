"""MetricsWriter: real TensorBoard event files and a JSONL log on rank 0, nothing elsewhere."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    IMAGES,
    SCALARS,
    EventAccumulator,
)

from ijepa_ds.observability.metrics import JSONL_NAME, TENSORBOARD_SUBDIR, MetricsWriter


def _read_tb(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / TENSORBOARD_SUBDIR), size_guidance={SCALARS: 0, IMAGES: 0})
    acc.Reload()
    return acc


def _read_jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / JSONL_NAME).read_text().splitlines()]


def test_scalars_round_trip_through_tensorboard_and_jsonl(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, rank=0, tensorboard=True, jsonl=True) as writer:
        writer.log_scalars(10, {"train/loss": 0.5, "train/lr": torch.tensor(1e-3)})
        writer.log_scalars(20, {"train/loss": 0.25, "train/lr": np.float32(2e-3)})
    acc = _read_tb(tmp_path)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [10, 20]
    assert [e.value for e in loss] == pytest.approx([0.5, 0.25])
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([1e-3, 2e-3])
    records = _read_jsonl(tmp_path)
    assert [r["step"] for r in records] == [10, 20]
    assert records[1]["train/loss"] == 0.25
    assert records[0]["train/lr"] == pytest.approx(1e-3)
    assert all(isinstance(r["time"], float) for r in records)


def test_image_round_trip(tmp_path: Path) -> None:
    img = torch.zeros(3, 8, 12, dtype=torch.uint8)
    img[0, :, :6] = 255  # left half red
    img[2, 4:, :] = 128  # bottom half with some blue
    with MetricsWriter(tmp_path, 0, tensorboard=True, jsonl=False) as writer:
        writer.log_image(7, "masks/overlay", img)
    events = _read_tb(tmp_path).Images("masks/overlay")
    assert [e.step for e in events] == [7]
    assert (events[0].width, events[0].height) == (12, 8)
    decoded = np.asarray(Image.open(io.BytesIO(events[0].encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, img.permute(1, 2, 0).numpy())
    assert not (tmp_path / JSONL_NAME).exists()


def test_jsonl_is_flushed_before_close_and_strict(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, 0, tensorboard=False, jsonl=True)
    writer.log_scalars(1, {"train/loss": float("nan"), "train/gn": math.inf, "ok": 3})
    # Read while the writer is still open: a crash now would keep this line.
    line = (tmp_path / JSONL_NAME).read_text()
    assert line.endswith("\n")
    assert json.loads(line) == {
        "step": 1,
        "time": json.loads(line)["time"],
        "train/loss": None,
        "train/gn": None,
        "ok": 3.0,
    }
    assert "NaN" not in line and "Infinity" not in line
    writer.close()
    writer.close()  # idempotent
    assert not (tmp_path / TENSORBOARD_SUBDIR).exists()


@pytest.mark.parametrize("rank", [1, 3])
def test_nonzero_ranks_write_nothing(tmp_path: Path, rank: int) -> None:
    run_dir = tmp_path / "run"
    writer = MetricsWriter(run_dir, rank, tensorboard=True, jsonl=True)
    assert not writer.enabled
    writer.log_scalars(1, {"train/loss": 1.0})
    writer.log_image(1, "img", torch.zeros(3, 2, 2, dtype=torch.uint8))
    writer.close()
    assert not run_dir.exists()


def test_resume_drops_replayed_and_torn_jsonl_lines(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, 0, tensorboard=False) as writer:
        for step in (10, 20, 30):
            writer.log_scalars(step, {"train/loss": step / 10})
    with (tmp_path / JSONL_NAME).open("a") as f:
        f.write('{"step": 40, "train/lo')  # a line cut short by a crash
    with MetricsWriter(tmp_path, 0, tensorboard=False, resume_step=30) as writer:
        writer.log_scalars(30, {"train/loss": 9.0})
    records = _read_jsonl(tmp_path)
    assert [(r["step"], r["train/loss"]) for r in records] == [(10, 1.0), (20, 2.0), (30, 9.0)]


def test_rejects_bad_inputs(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, 0, tensorboard=True, jsonl=True) as writer:
        with pytest.raises(TypeError, match="'train/loss': expected a number, got str"):
            writer.log_scalars(1, {"train/loss": "0.5"})
        with pytest.raises(ValueError, match="reserved"):
            writer.log_scalars(1, {"step": 1.0})
        with pytest.raises(ValueError, match="uint8"):
            writer.log_image(1, "img", torch.zeros(3, 4, 4))
        with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
            writer.log_image(1, "img", torch.zeros(4, 4, dtype=torch.uint8))
