"""Pretraining checks: a held-out JEPA loss that compares across epochs, and online health."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import assert_ok, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
WORKER = Path(__file__).with_name("evaluation_worker.py")


@pytest.mark.parametrize("stage", [1, 3])
def test_validation_loss_and_health(tmp_path, stage):
    out = tmp_path / "out.json"
    assert_ok(torchrun(2, WORKER, str(out), str(stage)))
    result = json.loads(out.read_text())
    before, after = result["before"], result["after"]
    assert before[0] == before[1]  # fixed subset, crops and masks: epochs compare
    assert math.isfinite(after) and after < before[0]  # 3 training steps lower it
    first, second = result["health"]
    assert first == second
    assert 0.0 <= first["health/knn_top1"] <= 100.0
    assert 1.0 <= first["health/rankme"] <= 48.0  # width of the tiny encoder
    assert first["health/feature_std"] > 0.0
