"""After a non-finite loss, no checkpoint holds a NaN: the files themselves are read back.

``tests/train/test_nonfinite.py`` covers the run itself (stop names the step and saves nothing
after it; skip trains on with finite in-memory weights). Here step 2 of the shared trained run
met a NaN sample under ``loss.on_nonfinite=skip`` and was checkpointed: every tensor of its
target encoder and of every DeepSpeed file (weights, fp32 masters, Adam moments) is finite.
"""

from __future__ import annotations

import math

import pytest
import torch

from ijepa_ds.checkpoint.verify import engine_files, load_train_state
from ijepa_ds.interop.zero_checkpoint import load_ds_file


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def test_the_run_dropped_the_poisoned_micro_batch(trained_run):
    _, job = trained_run
    assert "non-finite loss at optimizer step 2: micro-batch dropped" in job.stdout
    assert all(math.isfinite(x) for x in job.ranks[0]["losses"])


@pytest.mark.parametrize("step", ["step_00000001", "step_00000002"])
def test_checkpoint_files_hold_only_finite_values(trained_run, step):
    folder = trained_run[0] / "checkpoints" / step
    target = torch.load(folder / "target_encoder.pt", weights_only=True)["state_dict"]
    assert target and all(torch.isfinite(t).all() for t in target.values())
    files = engine_files(folder, load_train_state(folder))
    assert len(files) == 3  # model states + one optimizer shard per rank (ZeRO 1)
    for path in files:
        floats = [t for t in _tensors(load_ds_file(path, None)) if t.is_floating_point()]
        assert floats, path
        assert all(torch.isfinite(t).all() for t in floats), path
