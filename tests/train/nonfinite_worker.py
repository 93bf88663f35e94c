"""Run under torchrun: a poisoned sample (NaN pixels) at one position, loss.on_nonfinite=argv[3].

argv: out.json run_root mode. Writes what happened: the error message (stop) or the losses and
whether all final weights are finite (skip), plus the checkpoints that exist.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.distributed as dist

from ijepa_ds.data import loader as data_loader
from ijepa_ds.observability.nonfinite import NonFiniteLossError
from ijepa_ds.train import main as train_main
from tests.train.equivalence_worker import OVERRIDES

POISONED = 21  # a position of optimizer step 2 (global batch 16)


def main(out: str, run_root: str, mode: str) -> None:
    original = data_loader.PositionDataset.__getitem__

    def poisoned(self, position):
        img, label, p = original(self, position)
        return (torch.full_like(img, float("nan")) if p == POISONED else img), label, p

    data_loader.PositionDataset.__getitem__ = poisoned
    overrides = [o for o in OVERRIDES if not o.startswith("schedule.max_steps")] + [
        "schedule.max_steps=4",
        f"loss.on_nonfinite={mode}",
        f"logging.output_dir={run_root}",
        "logging.run_name=poison",
        "checkpoint.every_steps=1",
    ]
    args = argparse.Namespace(
        config="fmnist_tiny", overrides=overrides, resume="", resume_fallback=False, local_rank=None
    )
    captured = {}
    original_build = train_main.build_trainer

    def capture(*a, **k):
        captured["trainer"] = original_build(*a, **k)
        return captured["trainer"]

    train_main.build_trainer = capture
    result: dict = {}
    try:
        result["losses"] = train_main.run_training(args)["losses"]
    except NonFiniteLossError as err:
        result["error"] = str(err)
    module = captured["trainer"].engine.module
    result["weights_finite"] = all(torch.isfinite(p).all().item() for p in module.parameters())
    if dist.get_rank() == 0:
        json.dump(result, open(out, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
