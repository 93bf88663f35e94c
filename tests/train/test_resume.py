"""Stop after step k, resume with --resume auto: bit-identical losses and parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_ok, torchrun
from tests.train.equivalence_worker import GROUP_TWO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
WORKER = Path(__file__).with_name("resume_worker.py")


# The padded mask policies once each (keep_all; group_min with 2 groups per micro-batch of 4).
CASES = [
    (1, "fp32", ()), (2, "fp32", ()), (3, "fp32", ()), (3, "bf16", ()),
    (1, "fp32", ("mask.context_policy=keep_all",)),
    (3, "fp32", tuple(GROUP_TWO)),
]  # fmt: skip


@pytest.mark.parametrize(
    "stage,precision,extra", CASES, ids=[f"{s}-{p}-{e[0] if e else 'default'}" for s, p, e in CASES]
)
def test_resume_is_bit_identical(tmp_path, stage, precision, extra):
    out = tmp_path / "result.json"
    args = [str(out), str(tmp_path / "runs"), str(stage), precision, *extra]
    assert_ok(torchrun(2, WORKER, *args))
    result = json.loads(out.read_text())
    # Stopped at step 3 of 6 (mid-epoch: 4 steps per epoch), resumed from its checkpoint.
    assert result["second_start"] == 3
    assert result["first"] == result["full"][:3]
    assert result["second"] == result["full"][3:]  # exact float equality
    assert result["max_param_diff"] == 0.0
    names = [Path(p).name for p in result["checkpoints"]]
    assert names == ["step_00000003", "step_00000006"]
