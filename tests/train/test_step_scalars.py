"""Token scalars of a step count real tokens only; padding (-1) is reported as its own share."""

from __future__ import annotations

import pytest
import torch

from ijepa_ds.train.loop import step_scalars


def test_token_scalars_ignore_padding():
    masks_enc = [torch.tensor([[0, 1, 2, 3], [4, 5, -1, -1]])]
    masks_pred = [torch.tensor([[6, 7], [8, 9]])]
    scalars = step_scalars({}, torch.zeros(2, 3, 8, 8), masks_enc, masks_pred, torch.randn(2, 4, 8))
    assert scalars["tokens/context"] == 3.0  # (4 + 2) / 2, not the width 4
    assert scalars["tokens/target"] == 2.0
    assert scalars["tokens/context_padding"] == 0.25
    unpadded = step_scalars({}, None, [masks_enc[0][:1]], masks_pred, torch.randn(1, 4, 8))
    assert unpadded["tokens/context"] == 4.0 and unpadded["tokens/context_padding"] == 0.0


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
