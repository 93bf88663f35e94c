"""A NaN sample stops the run naming the step (no checkpoint after it), or is dropped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ijepa_ds.checkpoint.layout import complete_checkpoints
from tests.helpers import assert_ok, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
WORKER = Path(__file__).with_name("nonfinite_worker.py")


def _run(tmp_path, mode):
    out = tmp_path / "out.json"
    assert_ok(torchrun(2, WORKER, str(out), str(tmp_path / "runs"), mode))
    return json.loads(out.read_text()), [
        p.name for p in complete_checkpoints(tmp_path / "runs" / "poison")
    ]


def test_stop_names_the_step_and_saves_nothing_after(tmp_path):
    result, checkpoints = _run(tmp_path, "stop")
    assert "optimizer step 2" in result["error"] and "nan" in result["error"]
    assert checkpoints == ["step_00000001"]
    assert result["weights_finite"]
    assert not result["group_left"]  # every rank stopped together: groups destroyed, no barrier


def test_skip_drops_the_batch_and_trains_on(tmp_path):
    result, checkpoints = _run(tmp_path, "skip")
    assert len(result["losses"]) == 4 and all(math.isfinite(x) for x in result["losses"])
    assert result["weights_finite"]
    assert checkpoints[-1] == "step_00000004"
    assert result["group_left"]  # a finished run leaves its groups to the caller
