"""One phase of an elastic-resume check, run under torchrun with any number of ranks.

argv: out.pt run_root run_name stage max_steps resume ('' = none) [KEY=VALUE ...]. Writes
(rank 0) the losses, the start step and the final student and target tensors gathered to full
size; the run also saves a checkpoint at the end, whose Adam moments the test compares
world-size-independently through their universal form.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from ijepa_ds.backend.comm import shutdown_distributed
from tests.train.run_helpers import gathered_params, run_training_keep_trainer, tiny_overrides


def main(out, run_root, name, stage: int, max_steps: int, resume: str, extra: list[str]) -> None:
    overrides = tiny_overrides(
        run_root, name, stage, max_steps, "checkpoint.save_at_end=true", *extra
    )
    result, trainer = run_training_keep_trainer(overrides, resume)
    tensors = {f"student.{k}": v for k, v in gathered_params(trainer.engine.module).items()}
    tensors.update({f"target.{k}": v for k, v in gathered_params(trainer.target.module).items()})
    if dist.get_rank() == 0:
        torch.save(
            {"losses": result["losses"], "start_step": result["start_step"], "tensors": tensors},
            out,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6],
         sys.argv[7:])  # fmt: skip
    shutdown_distributed()
