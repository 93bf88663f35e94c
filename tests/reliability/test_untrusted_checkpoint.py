"""A checkpoint file whose unpickling would run code is refused with a clear message, before
anything (our loader or DeepSpeed's, which unpickles without checks) executes it."""

from __future__ import annotations

import os
import re

import pytest
import torch

from ijepa_ds.checkpoint.elastic import convert_to_universal, prepare_universal
from ijepa_ds.checkpoint.resume import CheckpointError, resolve_resume

NEWEST = "step_00000002"
FILES = [
    "train_state.pt",
    "target_encoder.pt",
    "engine/mp_rank_00_model_states.pt",
    "engine/zero_pp_rank_1_mp_rank_00_optim_states.pt",
]


class RunsCommand:
    """Unpickling this calls ``os.system(command)``: what a hostile checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _plant(path, marker) -> None:
    """Keep the file's real content and add an object that creates ``marker`` when unpickled."""
    content = torch.load(path, map_location="cpu", weights_only=False)  # our own, trusted
    content["payload"] = RunsCommand(f"touch {marker}")
    torch.save(content, path)


@pytest.mark.parametrize("name", FILES)
def test_code_carrying_file_is_refused_and_never_run(run_copy, tmp_path, name):
    marker = tmp_path / "code_ran"
    path = run_copy / "checkpoints" / NEWEST / name
    _plant(path, marker)
    with pytest.raises(CheckpointError, match="arbitrary unpickling") as info:
        resolve_resume(run_copy, "auto")
    message = str(info.value)
    assert str(path) in message and "refuse" in message
    assert not marker.exists()
    # With --resume-fallback the refused checkpoint is skipped like an unreadable one.
    assert resolve_resume(run_copy, "auto", fallback=True).name == "step_00000001"
    assert not marker.exists()
    # The file is really hostile: a plain unpickling (DeepSpeed's loader) would run it.
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_code_carrying_universal_file_is_refused(run_copy, tmp_path):
    # Elastic resume loads <step>/universal/ (made once, then reused): it is checked the same way.
    step = run_copy / "checkpoints" / NEWEST
    universal = convert_to_universal(step)
    marker = tmp_path / "code_ran"
    planted = sorted((universal / "engine" / "zero").rglob("exp_avg.pt"))[0]
    _plant(planted, marker)
    with pytest.raises(CheckpointError, match=re.escape(str(planted)) + ".*arbitrary unpickling"):
        prepare_universal(step, rank=0)
    assert not marker.exists()
