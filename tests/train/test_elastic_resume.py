"""Save on 2 ranks and resume on 1 (and the reverse) at ZeRO 1, 2, 3: the run continues as if
uninterrupted (parameters, Adam moments, target encoder, losses within 1e-6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ijepa_ds.checkpoint.elastic import convert_to_universal
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


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_elastic_resume_both_directions(tmp_path, stage):
    full = _phase(tmp_path, "full", 2, "full", stage, 6)
    final = lambda name: tmp_path / "runs" / name / "checkpoints" / "step_00000006"  # noqa: E731
    reference_states = _universal_states(final("full"))
    for first, second in ((2, 1), (1, 2)):
        name = f"w{first}to{second}"
        _phase(tmp_path, f"{name}-a", first, name, stage, 3)
        resumed = _phase(tmp_path, f"{name}-b", second, name, stage, 6, "auto")
        assert resumed["start_step"] == 3
        assert resumed["losses"] == pytest.approx(full["losses"][3:], abs=TOL)
        assert _max_diff(resumed["tensors"], full["tensors"]) <= TOL, name
        assert _max_diff(_universal_states(final(name)), reference_states) <= TOL, name


@pytest.mark.parametrize(
    "extra", [("mask.context_policy=keep_all",), tuple(GROUP_TWO)], ids=["keep_all", "group_min"]
)
def test_elastic_resume_with_padded_masks(tmp_path, extra):
    """2 ranks -> 1 at ZeRO 1 under keep_all or group_min (2 groups per micro-batch of 4): the
    micro-batches, so the padding, change with the world size."""
    full = _phase(tmp_path, "full", 2, "full", 1, 6, extra=extra)
    _phase(tmp_path, "a", 2, "split", 1, 3, extra=extra)
    resumed = _phase(tmp_path, "b", 1, "split", 1, 6, "auto", extra=extra)
    assert resumed["start_step"] == 3
    assert resumed["losses"] == pytest.approx(full["losses"][3:], abs=TOL)
    assert _max_diff(resumed["tensors"], full["tensors"]) <= TOL
