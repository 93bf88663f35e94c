"""Save on 2 ranks and resume on 1 (and the reverse) at ZeRO 1, 2, 3: the run continues as if
uninterrupted (parameters, Adam moments, target encoder, losses within 1e-6).

Each resumed phase starts from a checkpoint that an earlier run wrote on the way, so every
phase is one torchrun launch (their start-up is most of this file's time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ijepa_ds.checkpoint.elastic import convert_to_universal
from ijepa_ds.checkpoint.layout import step_folder_name
from tests.helpers import assert_ok, torchrun
from tests.train.equivalence_worker import GROUP_TWO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
WORKER = Path(__file__).with_name("elastic_worker.py")
TOL = 1e-6


def _phase(tmp: Path, tag, nproc: int, name, stage: int, steps: int, resume="", extra=()):
    out = tmp / f"{tag}.pt"
    args = [str(out), str(tmp / "runs"), name, str(stage), str(steps), resume, *extra]
    assert_ok(torchrun(nproc, WORKER, *args))
    return torch.load(out, weights_only=True)


def _universal_states(step_dir: Path) -> dict[str, torch.Tensor]:
    zero = convert_to_universal(step_dir) / "engine" / "zero"
    states = {}
    for param_dir in zero.iterdir():
        if not param_dir.is_dir():
            continue
        for key in ("fp32", "exp_avg", "exp_avg_sq"):  # frozen pos tables have fp32 only
            if (param_dir / f"{key}.pt").is_file():
                obj = torch.load(param_dir / f"{key}.pt", weights_only=True)
                states[f"{param_dir.name}/{key}"] = obj["param"] if isinstance(obj, dict) else obj
    return states


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _step_dir(tmp: Path, name: str, step: int) -> Path:
    return tmp / "runs" / name / "checkpoints" / step_folder_name(step)


# The uninterrupted run also saves at steps 2 and 4 (and keeps them), for the others to resume.
SAVE_EVERY_2 = ("checkpoint.every_steps=2", "checkpoint.keep_last=3")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_elastic_resume_both_directions(tmp_path, stage):
    """2 ranks -> 1 -> 2: the 2-rank run's step-2 checkpoint continues on 1 rank to step 4,
    and that 1-rank checkpoint on 2 ranks to step 6, as the 2-rank run went on."""
    full = _phase(tmp_path, "full", 2, "full", stage, 6, extra=SAVE_EVERY_2)
    one = _phase(tmp_path, "one", 1, "chain", stage, 4, str(_step_dir(tmp_path, "full", 2)))
    two = _phase(tmp_path, "two", 2, "chain", stage, 6, "auto")
    assert (one["start_step"], two["start_step"]) == (2, 4)
    assert one["losses"] == pytest.approx(full["losses"][2:4], abs=TOL)
    assert two["losses"] == pytest.approx(full["losses"][4:], abs=TOL)
    assert _max_diff(two["tensors"], full["tensors"]) <= TOL
    for step in (4, 6):  # written on 1 rank, then on 2
        chain, reference = (
            _universal_states(_step_dir(tmp_path, n, step)) for n in ("chain", "full")
        )
        assert _max_diff(chain, reference) <= TOL, f"step {step}"


@pytest.mark.parametrize(
    "extra", [("mask.context_policy=keep_all",), tuple(GROUP_TWO)], ids=["keep_all", "group_min"]
)
def test_elastic_resume_with_padded_masks(tmp_path, extra):
    """2 ranks -> 1 at ZeRO 1 under keep_all or group_min (2 groups per micro-batch of 4): the
    micro-batches, so the padding, change with the world size."""
    full = _phase(tmp_path, "full", 2, "full", 1, 6, extra=(*extra, *SAVE_EVERY_2))
    resumed = _phase(tmp_path, "b", 1, "split", 1, 6, str(_step_dir(tmp_path, "full", 2)), extra)
    assert resumed["start_step"] == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], abs=TOL)
    assert _max_diff(resumed["tensors"], full["tensors"]) <= TOL
