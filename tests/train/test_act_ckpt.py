"""Activation checkpointing: every implementation gives the gradients of no checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from ijepa_ds.train.act_ckpt import apply_activation_checkpointing
from tests.helpers import assert_ok, torchrun

WORKER = Path(__file__).with_name("act_ckpt_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("act_ckpt") / "results.json"
    assert_ok(torchrun(1, WORKER, str(out)))
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.distributed
def test_gradients_equal_without_checkpointing(results):
    assert len(results) == 8  # 2 implementations x {encoder, predictor} x {every 1, every 2}
    for name, entry in results.items():
        assert entry["max_diff"] <= 1e-6, name
        assert entry["state_dict_keys_kept"], name
        depth = 4 if "/encoder/" in name else 2
        expected = depth if name.endswith("every1") else (depth + 1) // 2
        assert entry["checkpointed_blocks"] == expected, name


def test_interval_and_errors():
    blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(5))
    assert apply_activation_checkpointing(blocks, 0) == 0
    assert apply_activation_checkpointing(blocks, 3) == 2  # blocks 0 and 3
    with pytest.raises(ValueError, match="act_ckpt_impl"):
        apply_activation_checkpointing(blocks, 1, "fairscale")
    with pytest.raises(ValueError, match=">= 0"):
        apply_activation_checkpointing(blocks, -1)
