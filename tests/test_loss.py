"""Targets (layer norm, masking, batch stacking) and the JEPA regression loss."""

import pytest
import torch

from ijepa_ds.loss import jepa_loss, make_targets, target_features


def test_target_features_are_layer_normed_without_affine() -> None:
    torch.manual_seed(0)
    out = torch.randn(2, 5, 8) * 3 + 1
    mean = out.mean(dim=-1, keepdim=True)
    var = out.var(dim=-1, unbiased=False, keepdim=True)
    expected = (out - mean) / torch.sqrt(var + 1e-5)  # torch's default eps, as the reference
    torch.testing.assert_close(target_features(out), expected, atol=1e-6, rtol=0)


def test_make_targets_align_with_predictor_rows() -> None:
    torch.manual_seed(1)
    batch, nenc, npred, k_pred = 3, 2, 4, 5
    target_out = torch.randn(batch, 16, 8)
    masks_pred = [
        torch.stack([torch.randperm(16)[:k_pred] for _ in range(batch)]) for _ in range(npred)
    ]
    targets = make_targets(target_out, masks_pred, num_enc_masks=nenc)
    assert targets.shape == (npred * nenc * batch, k_pred, 8)
    normed = target_features(target_out)
    for p in range(npred):
        for e in range(nenc):
            for b in range(batch):
                row = (p * nenc + e) * batch + b
                assert torch.equal(targets[row], normed[b, masks_pred[p][b]])


def test_smooth_l1_is_huber_with_beta_one() -> None:
    pred = torch.tensor([0.0, 0.5, 3.0, -2.0])
    target = torch.zeros(4)
    # 0.5 d^2 inside |d| < 1, |d| - 0.5 outside.
    expected = (0.0 + 0.125 + 2.5 + 1.5) / 4
    assert jepa_loss(pred, target).item() == pytest.approx(expected)
    assert jepa_loss(pred, target, "smooth_l1").item() == pytest.approx(expected)


def test_l2_is_mean_squared_error() -> None:
    pred = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    loss = jepa_loss(pred, torch.zeros(2, 2), "l2")
    assert loss.item() == pytest.approx((1 + 4 + 0.25) / 4)
    loss.backward()
    torch.testing.assert_close(pred.grad, pred.detach() / 2)


def test_unknown_loss_kind_is_named() -> None:
    with pytest.raises(ValueError, match="unknown loss kind 'huber'"):
        jepa_loss(torch.zeros(1), torch.zeros(1), "huber")


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
