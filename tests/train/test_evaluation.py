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


def test_training_run_logs_checks_and_keeps_the_best_checkpoint(tmp_path):
    import subprocess
    import sys

    from ijepa_ds.checkpoint.layout import is_complete, read_best
    from tests.helpers import REPO, cpu_env
    from tests.train.equivalence_worker import OVERRIDES

    overrides = [o for o in OVERRIDES if "max_steps" not in o and "jsonl" not in o]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ijepa_ds", "train", "--config", "fmnist_tiny", *overrides,
           "schedule.max_steps=8", "eval.pretrain_val_every_epochs=1", "eval.batch_size=8",
           "eval.pretrain_val_samples=32",
           "eval.health_every_steps=4", "eval.health_train_samples=64",
           "eval.health_val_samples=32", "eval.knn_k=5", "checkpoint.keep_last=1",
           f"logging.output_dir={tmp_path}", "logging.run_name=checks"]  # fmt: skip
    proc = subprocess.run(cmd, env=cpu_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "held-out JEPA loss" in proc.stdout and "online kNN" in proc.stdout
    run = tmp_path / "checks"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = {x["step"]: x["val/loss"] for x in lines if "val/loss" in x}
    assert sorted(val) == [4, 8]  # every epoch (4 steps per epoch)
    assert any("health/knn_top1" in x for x in lines)
    best = read_best(run)
    assert best is not None and is_complete(best)
    assert best.name == f"step_{min(val, key=val.get):08d}"  # kept despite keep_last=1
