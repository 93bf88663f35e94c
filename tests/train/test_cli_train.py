"""The README's main job, for real: `ijepa-ds train` under torchrun writes a complete run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ijepa_ds.checkpoint.layout import complete_checkpoints, read_latest
from tests.helpers import REPO, cpu_env, train_command
from tests.train.equivalence_worker import OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _train(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(nproc, *args), env=cpu_env(), cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.skipif(not FMNIST.exists(), reason="needs apt-get install dataset-fashion-mnist")
def test_quickstart_fmnist_tiny_two_ranks(tmp_path):
    proc = _train(
        2,
        "--config",
        "fmnist_tiny",
        "schedule.max_steps=4",
        "logging.log_every=2",
        "logging.image_every=2",
        f"logging.output_dir={tmp_path}",
        "logging.run_name=quick",
        "checkpoint.every_steps=2",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "step 4/4" in proc.stdout and "img/s" in proc.stdout and "ETA" in proc.stdout
    run = tmp_path / "quick"
    for name in ("config.yaml", "ds_config.json", "git_revision.txt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 128 and ds["gradient_clipping"] == 0.0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 4]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag in (
        "loss",
        "lr",
        "wd",
        "momentum",
        "health/target_feature_std",
        "tokens/context",
        "grad_norm/encoder",
        "grad_norm/predictor",
    ):
        assert tag in events.Tags()["scalars"], tag
    assert "masks/overlay" in events.Tags()["images"]
    assert [p.name for p in complete_checkpoints(run)] == ["step_00000002", "step_00000004"]
    assert read_latest(run).name == "step_00000004"
    assert (run / "logs" / "rank0.log").is_file() and (run / "logs" / "rank1.log").is_file()


def test_four_ranks_oversubscribed_zero3(tmp_path):
    overrides = [o for o in OVERRIDES if "batch_size" not in o and "max_steps" not in o]
    proc = _train(
        4,
        "--config",
        "fmnist_tiny",
        *overrides,
        "data.batch_size=2",
        "data.global_batch_size=16",
        "deepspeed.config=zero3",
        "schedule.max_steps=2",
        f"logging.output_dir={tmp_path}",
        "logging.run_name=four",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "4 ranks" in proc.stdout and "16 = 2 x 4 ranks x 2 accum" in proc.stdout
    assert "step 2/2" in proc.stdout


def test_bad_config_fails_before_any_process_group(tmp_path):
    proc = _train(2, "--config", "fmnist_tiny", "data.batch_sze=3", timeout=120)
    assert proc.returncode != 0
    assert "data.batch_sze" in proc.stderr and "Did you mean data.batch_size" in proc.stderr
    assert "exitcode  : 2" in proc.stderr  # each rank exited 2 with the message...
    assert str(REPO / "ijepa_ds") not in proc.stderr  # ...and no traceback from our code
