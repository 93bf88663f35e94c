"""Run under torchrun: pretraining checks (held-out loss, online health) on a built trainer.

argv: out.json stage. Writes the values of two calls of each check (they must agree).
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
from ijepa_ds.backend.ds_config import build_ds_config
from ijepa_ds.config import load_config
from ijepa_ds.distributed import detect_dist_env
from ijepa_ds.train.evaluation import PretrainEvaluator
from ijepa_ds.train.loop import train_loop
from ijepa_ds.train.trainer import build_trainer
from tests.train.equivalence_worker import OVERRIDES


def main(out: str, stage: int) -> None:
    env = detect_dist_env()
    init_distributed(env)
    cfg = load_config("fmnist_tiny", OVERRIDES + [
        f"deepspeed.config=zero{stage}", "eval.batch_size=8", "eval.pretrain_val_samples=40",
        "eval.health_train_samples=96", "eval.health_val_samples=48", "eval.knn_k=5",
    ])  # fmt: skip
    trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
    evaluator = PretrainEvaluator(trainer)
    before = [evaluator.validation_loss(), evaluator.validation_loss()]
    train_loop(trainer, start_step=0)
    after = evaluator.validation_loss()
    health = [evaluator.health(), evaluator.health()]
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"before": before, "after": after, "health": health}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    shutdown_distributed()
