"""``logging.wandb=true`` in a real 2-rank ``fmnist_tiny`` run (torchrun, gloo, CPU, offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ijepa_ds.observability.wandb_sink import RUN_ID_FILE
from tests.helpers import REPO, assert_ok, cpu_env

pytest.importorskip("wandb")
from tests.observability.wandb_files import offline_runs  # noqa: E402  (needs wandb)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FMNIST.exists(), reason="needs apt-get install dataset-fashion-mnist")
def test_two_rank_run_leaves_an_offline_wandb_run(tmp_path):
    home = tmp_path / "wandb_home"  # W&B's caches and settings, away from the user's
    env = {k: v for k, v in cpu_env().items() if not k.startswith("WANDB_")}
    env.update({n: str(home / n.lower()) for n in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR")})
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "ijepa_ds", "train", "--config", "fmnist_tiny",
        # Smaller batches and model than the preset: the point is the logging, not the speed.
        "data.batch_size=16", "data.global_batch_size=32", "model.depth=2", "model.pred_depth=1",
        "schedule.max_steps=3", "logging.log_every=1", "logging.image_every=2",
        f"logging.output_dir={tmp_path}", "logging.run_name=wb", "checkpoint.save_at_end=false",
        "eval.pretrain_val_every_epochs=0", "eval.health_every_steps=3", "eval.batch_size=32",
        "eval.health_train_samples=128", "eval.health_val_samples=64",
        "logging.wandb=true", "logging.wandb_mode=offline", "logging.wandb_tags=[ci]",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_ok(proc)
    run_dir = tmp_path / "wb"
    (run,) = offline_runs(run_dir)  # rank 1 started none
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run.run_id
    assert run.tags == ["ci"] and run.exit_code == 0
    assert run.config["model"]["patch_size"] == 4 and run.config["logging"]["wandb"] is True
    assert [row["_step"] for row in run.history] == [1, 2, 3]
    for key in ("loss", "lr", "wd", "momentum", "grad_norm/encoder", "tokens/context",
                "health/target_feature_std", "health/knn_top1", "health/rankme",
                "masks/overlay/_type"):  # fmt: skip
        assert key in run.keys, key
    assert "W&B offline run in" in proc.stdout + proc.stderr
