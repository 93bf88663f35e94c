"""Pretraining checks: a held-out JEPA loss that compares across epochs, and online health."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ijepa_ds.checkpoint.layout import BEST_VALUE, checkpoints_dir, is_complete, read_best
from tests.helpers import REPO, assert_ok, torchrun
from tests.train.equivalence_worker import OVERRIDES

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


# Cheap settings of the pretraining checks: held-out loss every epoch, online kNN samples.
VAL_EVERY_EPOCH = ["eval.pretrain_val_every_epochs=1", "eval.batch_size=8",
                   "eval.pretrain_val_samples=32"]  # fmt: skip
HEALTH = ["eval.health_train_samples=64", "eval.health_val_samples=32", "eval.knn_k=5"]


def train_cli(tmp_path, run_name: str, *extra: str):
    """``torchrun -m ijepa_ds train`` (2 ranks) on the tiny synthetic config, metrics.jsonl
    on, in ``tmp_path/run_name``; returns the finished process."""
    overrides = [o for o in OVERRIDES if "max_steps" not in o and "jsonl" not in o]
    run = [f"logging.output_dir={tmp_path}", f"logging.run_name={run_name}"]
    args = ["-m", "ijepa_ds", "train", "--config", "fmnist_tiny", *overrides, *run, *extra]
    proc = torchrun(2, *args, cwd=REPO)
    assert_ok(proc)
    return proc


def test_training_run_logs_checks_and_keeps_the_best_checkpoint(tmp_path):
    proc = train_cli(tmp_path, "checks", *VAL_EVERY_EPOCH, *HEALTH, "schedule.max_steps=8",
                     "eval.health_every_steps=4", "checkpoint.keep_last=1")  # fmt: skip
    assert "held-out JEPA loss" in proc.stdout and "online kNN" in proc.stdout
    run = tmp_path / "checks"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = {x["step"]: x["val/loss"] for x in lines if "val/loss" in x}
    assert sorted(val) == [4, 8]  # every epoch (4 steps per epoch)
    assert any("health/knn_top1" in x for x in lines)
    best = read_best(run)
    assert best is not None and is_complete(best)
    assert best.name == f"step_{min(val, key=val.get):08d}"  # kept despite keep_last=1
    record = json.loads((best.parent / "best.json").read_text())
    assert record == {"folder": best.name, "metric": "val/loss", "value": min(val.values())}


def test_resumed_run_keeps_comparing_against_the_best_so_far(tmp_path):
    """Stop after epoch 1 (best = step 4), resume to the end: step 8 replaces ``best`` only
    if it beats the loss recorded for step 4, which this test lowers to 0 before resuming."""
    checks = [
        "eval.pretrain_val_every_epochs=1",
        "eval.batch_size=8",
        "eval.pretrain_val_samples=32",
    ]
    run = tmp_path / "resumed"
    train_cli(tmp_path, "resumed", *checks, "schedule.max_steps=4")
    assert read_best(run).name == "step_00000004"
    record = json.loads((checkpoints_dir(run) / BEST_VALUE).read_text())
    assert record["folder"] == "step_00000004" and record["value"] > 0
    record["value"] = 0.0  # nothing can beat it
    (checkpoints_dir(run) / BEST_VALUE).write_text(json.dumps(record))
    train_cli(tmp_path, "resumed", *VAL_EVERY_EPOCH, "--resume", "auto")
    assert (checkpoints_dir(run) / "step_00000008").is_dir()
    assert read_best(run).name == "step_00000004"


def test_best_by_online_knn(tmp_path):
    train_cli(tmp_path, "knn", *HEALTH, "schedule.max_steps=8", "eval.pretrain_val_every_epochs=0",
              "eval.batch_size=8", "eval.best_metric=knn", "eval.health_every_steps=2",
              "checkpoint.keep_last=1")  # fmt: skip
    run = tmp_path / "knn"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    knn = {x["step"]: x["health/knn_top1"] for x in lines if "health/knn_top1" in x}
    assert sorted(knn) == [2, 4, 6, 8]
    first_max = min(s for s in knn if knn[s] == max(knn.values()))
    best = read_best(run)
    assert best.name == f"step_{first_max:08d}"
    record = json.loads((best.parent / "best.json").read_text())
    assert record == {"folder": best.name, "metric": "health/knn_top1", "value": knn[first_max]}
