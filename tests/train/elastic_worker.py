"""One phase of an elastic-resume check, run under torchrun with any number of ranks.

argv: out.json run_root run_name stage max_steps resume("" or auto)
Writes (rank 0) the losses, the start step and the final student and target tensors gathered
to full size; the run also saves a checkpoint at the end, whose Adam moments the test compares
world-size-independently through their universal form.
"""

from __future__ import annotations

import argparse
import sys

import deepspeed
import torch
import torch.distributed as dist

from ijepa_ds.train import main as train_main
from tests.train.equivalence_worker import OVERRIDES


def _snapshot(trainer) -> dict[str, torch.Tensor]:
    module = trainer.engine.module
    out = {}
    params = list(module.parameters()) + list(trainer.target.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        for name, p in module.named_parameters():
            out[f"student.{name}"] = p.detach().float().clone()
        for name, p in trainer.target.module.named_parameters():
            out[f"target.{name}"] = p.detach().float().clone()
    return out


def main(out: str, run_root: str, name: str, stage: int, max_steps: int, resume: str) -> None:
    overrides = [o for o in OVERRIDES if not o.startswith("schedule.max_steps")] + [
        f"deepspeed.config=zero{stage}",
        f"schedule.max_steps={max_steps}",
        f"logging.output_dir={run_root}",
        f"logging.run_name={name}",
        "checkpoint.save_at_end=true",
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
    snapshot = _snapshot(captured["trainer"])
    if dist.get_rank() == 0:
        torch.save(
            {"losses": result["losses"], "start_step": result["start_step"], "tensors": snapshot},
            out,
        )


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]),
        int(sys.argv[5]),
        sys.argv[6] if len(sys.argv) > 6 else "",
    )
