"""Run under torchrun: a poisoned sample (NaN pixels) at one position, loss.on_nonfinite=argv[3].

argv: out.json run_root mode. Writes what happened: the error message (stop) or the losses and
whether all final weights are finite (skip), plus the checkpoints that exist and whether the
process group outlived the run.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from ijepa_ds.backend.comm import shutdown_distributed
from ijepa_ds.data import loader as data_loader
from ijepa_ds.observability.nonfinite import NonFiniteLossError
from tests.train.run_helpers import run_training_keep_trainer, tiny_overrides

POISONED = 21  # a position of optimizer step 2 (global batch 16)


def main(out: str, run_root: str, mode: str) -> None:
    original = data_loader.PositionDataset.__getitem__

    def poisoned(self, position):
        img, label, p = original(self, position)
        return (torch.full_like(img, float("nan")) if p == POISONED else img), label, p

    data_loader.PositionDataset.__getitem__ = poisoned
    overrides = tiny_overrides(
        run_root, "poison", 1, 4, f"loss.on_nonfinite={mode}", "checkpoint.every_steps=1"
    )
    result: dict = {}
    captured: dict = {}
    try:
        result["losses"] = run_training_keep_trainer(overrides, captured=captured)[0]["losses"]
    except NonFiniteLossError as err:
        result["error"] = str(err)
    result["group_left"] = dist.is_initialized()
    module = captured["trainer"].engine.module
    result["weights_finite"] = all(torch.isfinite(p).all().item() for p in module.parameters())
    if os.environ["RANK"] == "0":
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
    shutdown_distributed()
