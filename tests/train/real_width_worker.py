"""Run under torchrun (2 ranks): the ``vit_h14_in1k`` preset at its real width (1280, 16 heads,
patch 14 at 224, its predictor width and masks) with the depth cut, under ZeRO-3 with activation
checkpointing, micro-batch 1, and fp32 partitions split into many optimizer sub-groups.

argv: out.json run_root ds_config.json. Runs 3 steps uninterrupted, then 2 steps + resume for
the 3rd, through the real ``run_training``. Rank 1 records how much its peak RSS rose while
saving (``VmHWM``, reset before the save): a rank that does not write the target file must not
hold the gathered target encoder.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from ijepa_ds.backend.comm import shutdown_distributed
from ijepa_ds.checkpoint import saver
from tests.train.run_helpers import gathered_params, run_training_keep_trainer

TOTAL, STOP = 3, 2


def _vm_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def _record_save_peaks(peaks: list[int]):
    """Wrap ``save_checkpoint`` to append the rise of this rank's peak RSS (KiB) per save."""
    original = saver.save_checkpoint

    def measured(*args, **kwargs):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _vm_kib("VmRSS")
        folder = original(*args, **kwargs)
        peaks.append(_vm_kib("VmHWM") - before)
        return folder

    saver.save_checkpoint = measured


def run(run_root: str, name: str, ds_json: str, max_steps: int, resume: str):
    overrides = [
        "data.dataset=synthetic", "data.synthetic_size=8", "data.batch_size=1",
        "data.global_batch_size=2", "data.num_workers=0", "data.pin_memory=false",
        "model.depth=2", "model.pred_depth=2", "model.act_ckpt_encoder=1",
        "model.act_ckpt_predictor=1", "optim.precision=fp32", f"deepspeed.config={ds_json}",
        f"schedule.max_steps={max_steps}", "checkpoint.every_steps=0",
        "checkpoint.save_at_end=true", "checkpoint.every_minutes=0",
        f"logging.output_dir={run_root}", f"logging.run_name={name}",
        "logging.log_every=1",
    ]  # fmt: skip
    result, trainer = run_training_keep_trainer(overrides, resume, config="vit_h14_in1k")
    params = gathered_params(trainer.engine.module)
    params.update({f"target.{k}": v for k, v in gathered_params(trainer.target.module).items()})
    target_bytes = sum(p.ds_numel * 4 for p in trainer.target.module.parameters())
    return result, params, target_bytes


def main(out: str, run_root: str, ds_json: str) -> None:
    peaks: list[int] = []
    _record_save_peaks(peaks)
    full, full_params, target_bytes = run(run_root, "full", ds_json, TOTAL, "")
    first, _, _ = run(run_root, "split", ds_json, STOP, "")
    second, split_params, _ = run(run_root, "split", ds_json, TOTAL, "auto")
    diff = max((full_params[k] - split_params[k]).abs().max().item() for k in full_params)
    gathered = [None, None]
    dist.all_gather_object(gathered, peaks)
    if dist.get_rank() == 0:
        result = {
            "full": full["losses"], "first": first["losses"], "second": second["losses"],
            "second_start": second["start_step"], "max_param_diff": diff,
            "save_peak_kib": gathered, "target_bytes": target_bytes,
        }  # fmt: skip
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
    shutdown_distributed()
