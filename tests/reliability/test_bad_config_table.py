"""Bad configurations at the trainer's entry point: each is a ValueError naming the field,
raised by ``ijepa_ds.train.main.prepare`` before any process group exists.

The rules themselves are tested field by field in ``tests/config/`` (``test_validate.py``,
``test_loader.py``); this table checks that the entry point applies them, with the launcher's
world size, before a single rank could wait on another.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from ijepa_ds.train.args import TrainArgs
from ijepa_ds.train.main import prepare
from tests.reliability.fault_worker import BASE

TWO_RANKS = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": "29500"}  # fmt: skip
THREE_RANKS = {**TWO_RANKS, "WORLD_SIZE": "3"}

# (id, preset, overrides, launcher environment, pattern the message must match)
CASES = [
    ("typo-in-key", "fmnist_tiny", ["data.batch_sze=4"], TWO_RANKS,
     r"'data\.batch_sze'\. Did you mean data\.batch_size"),
    ("typo-in-value", "fmnist_tiny", ["optim.precision=bf61"], TWO_RANKS,
     r"optim\.precision='bf61': must be one of \['bf16', 'fp32'\] \(did you mean 'bf16'\?\)"),
    ("wrong-type", "fmnist_tiny", ["schedule.lr=fast"], TWO_RANKS,
     r"schedule\.lr: expected number, got str 'fast'"),
    ("impossible-mask", "fmnist_tiny", ["mask.min_keep=40"], TWO_RANKS,
     r"mask\.min_keep=40 exceeds the smallest target block"),
    ("context-too-small", "fmnist_tiny", ["mask.enc_mask_scale=[0.1,0.1]"], TWO_RANKS,
     r"mask\.enc_mask_scale=\(0\.1, 0\.1\) is too small"),
    ("patch-does-not-divide-image", "fmnist_tiny", ["model.patch_size=5"], TWO_RANKS,
     r"model\.patch_size=5: must divide data\.crop_size=32"),
    ("batch-not-divisible-by-ranks-x-accumulation", "fmnist_tiny", [], THREE_RANKS,
     r"data\.global_batch_size=16 must be a multiple of data\.batch_size=4 x world size 3"),
    ("unknown-preset", "fmnist_tinny", [], TWO_RANKS, r"'fmnist_tinny'.*Did you mean fmnist_tiny"),
    ("missing-data-path", "fmnist_tiny",
     ["data.dataset=fashion_mnist", "data.root=/nonexistent/fmnist"], TWO_RANKS,
     r"data\.root='/nonexistent/fmnist': dataset folder /nonexistent/fmnist does not exist"),
    ("zero-stage-4", "fmnist_tiny", ["deepspeed.zero_stage=4"], TWO_RANKS,
     r"deepspeed\.zero_stage=4: must be -1 \(from the JSON\), 0, 1, 2 or 3"),
    ("malformed-dist-timeout", "fmnist_tiny", [],
     {**TWO_RANKS, "IJEPA_DS_DIST_TIMEOUT_MINUTES": "ten"},
     r"IJEPA_DS_DIST_TIMEOUT_MINUTES='ten' is not a number of minutes"),
    ("infinite-dist-timeout", "fmnist_tiny", [],
     {**TWO_RANKS, "IJEPA_DS_DIST_TIMEOUT_MINUTES": "inf"},
     r"IJEPA_DS_DIST_TIMEOUT_MINUTES='inf' must be a finite number of minutes > 0"),
]  # fmt: skip


@pytest.mark.parametrize("preset,overrides,env,pattern", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_config_fails_before_any_process_group(monkeypatch, preset, overrides, env, pattern):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = TrainArgs(preset, (*BASE, *overrides))
    with pytest.raises(ValueError, match=pattern):
        prepare(args)
    assert not dist.is_initialized()


def test_the_same_config_passes_when_valid(monkeypatch):
    for name, value in TWO_RANKS.items():
        monkeypatch.setenv(name, value)
    args = TrainArgs("fmnist_tiny", tuple(BASE))
    cfg, dist_env, ds_config = prepare(args)
    assert dist_env.world_size == 2 and ds_config["train_batch_size"] == 16
    assert cfg.model.name == "vit_tiny"
    assert not dist.is_initialized()
