"""Run under torchrun: stop after step k, resume, and compare with an uninterrupted run.

argv: out.json run_root stage precision. Uses the real ``run_training`` entry point
(run folders, checkpoints, ``--resume auto``). Writes losses and final-parameter digests.
"""

from __future__ import annotations

import argparse
import json
import sys

import deepspeed
import torch
import torch.distributed as dist

from ijepa_ds.train import main as train_main
from tests.train.equivalence_worker import OVERRIDES

TOTAL, STOP = 6, 3


def _params(trainer_module) -> dict[str, torch.Tensor]:
    params = list(trainer_module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {n: p.detach().float().clone() for n, p in trainer_module.named_parameters()}


def run(run_root: str, name: str, stage: int, precision: str, max_steps: int, resume: str):
    overrides = [o for o in OVERRIDES if not o.startswith("schedule.max_steps")] + [
        f"deepspeed.config=zero{stage}",
        f"optim.precision={precision}",
        f"schedule.max_steps={max_steps}",
        f"logging.output_dir={run_root}",
        f"logging.run_name={name}",
        "checkpoint.every_steps=0",
        "checkpoint.save_at_end=true",
        "model.drop_path_rate=0.1",
    ]
    args = argparse.Namespace(
        config="fmnist_tiny",
        overrides=overrides,
        resume=resume,
        resume_fallback=False,
        local_rank=None,
    )
    captured = {}
    original = train_main.build_trainer

    def capture(*a, **k):
        captured["trainer"] = original(*a, **k)
        return captured["trainer"]

    train_main.build_trainer = capture
    try:
        result = train_main.run_training(args)
    finally:
        train_main.build_trainer = original
    trainer = captured["trainer"]
    params = _params(trainer.engine.module)
    params.update({f"target.{k}": v for k, v in _params(trainer.target.module).items()})
    return result, params


def main(out: str, run_root: str, stage: int, precision: str) -> None:
    full, full_params = run(run_root, "full", stage, precision, TOTAL, "")
    first, _ = run(run_root, "split", stage, precision, STOP, "")
    second, split_params = run(run_root, "split", stage, precision, TOTAL, "auto")
    diff = max((full_params[k] - split_params[k]).abs().max().item() for k in full_params)
    if dist.get_rank() == 0:
        json.dump(
            {
                "full": full["losses"],
                "first": first["losses"],
                "second": second["losses"],
                "second_start": second["start_step"],
                "max_param_diff": diff,
                "checkpoints": first["checkpoints"] + second["checkpoints"],
            },
            open(out, "w"),
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
