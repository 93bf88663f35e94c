"""Run under torchrun: stop after step k, resume, and compare with an uninterrupted run.

argv: out.json run_root stage precision [KEY=VALUE ...] (extra overrides). Uses the real
``run_training`` entry point (run folders, checkpoints, ``--resume auto``). Writes losses and
the final-parameter difference.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from ijepa_ds.backend.comm import shutdown_distributed
from tests.train.run_helpers import gathered_params, run_training_keep_trainer, tiny_overrides

TOTAL, STOP = 6, 3


def run(run_root, name, stage, precision, max_steps, resume, extra=()):
    overrides = tiny_overrides(
        run_root, name, stage, max_steps, f"optim.precision={precision}",
        "checkpoint.every_steps=0", "checkpoint.save_at_end=true", "model.drop_path_rate=0.1",
        *extra,
    )  # fmt: skip
    result, trainer = run_training_keep_trainer(overrides, resume)
    params = gathered_params(trainer.engine.module)
    params.update({f"target.{k}": v for k, v in gathered_params(trainer.target.module).items()})
    return result, params


def main(out: str, run_root: str, stage: int, precision: str, extra: list[str]) -> None:
    full, full_params = run(run_root, "full", stage, precision, TOTAL, "", extra)
    first, _ = run(run_root, "split", stage, precision, STOP, "", extra)
    second, split_params = run(run_root, "split", stage, precision, TOTAL, "auto", extra)
    diff = max((full_params[k] - split_params[k]).abs().max().item() for k in full_params)
    if dist.get_rank() == 0:
        result = {
            "full": full["losses"], "first": first["losses"], "second": second["losses"],
            "second_start": second["start_step"], "max_param_diff": diff,
            "checkpoints": first["checkpoints"] + second["checkpoints"],
        }  # fmt: skip
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    shutdown_distributed()
