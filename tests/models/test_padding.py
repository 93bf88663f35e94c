"""Padded masks (-1 entries, mask.context_policy keep_all / group_min): padded tokens change no
real token's output or gradient, in the encoder, the predictor and the loss."""

from __future__ import annotations

import copy

import pytest
import torch

from ijepa_ds.backend.act_ckpt import apply_activation_checkpointing
from ijepa_ds.loss import jepa_loss, make_targets, valid_targets
from ijepa_ds.models import VisionTransformer, VisionTransformerPredictor
from ijepa_ds.models.tokens import apply_masks, key_padding

B, NENC, NPRED = 3, 2, 2
TOL = 2e-6  # relative to the largest entry: fp32, only the order of some sums differs

# Real lengths per (sample, list): contexts differ across samples and lists, targets too.
CTX_LEN = [[9, 5], [7, 9], [4, 6]]
TGT_LEN = [[4, 2], [3, 4], [4, 4]]


def _models(attn_impl: str):
    torch.manual_seed(0)
    enc = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, attn_impl=attn_impl
    ).eval()
    pred = VisionTransformerPredictor(
        grid_size=(4, 4), embed_dim=32, predictor_embed_dim=16, depth=2, num_heads=4,
        attn_impl=attn_impl,
    ).eval()  # fmt: skip
    return enc, pred


def _padded(lengths: list[list[int]], seed: int) -> tuple[list[torch.Tensor], list[list]]:
    """Per list j a LongTensor [B, max length] of distinct sorted indices, -1 padded; and the
    real index tensors [B][lists]."""
    gen = torch.Generator().manual_seed(seed)
    width = max(max(row) for row in lengths)
    real = [[torch.randperm(16, generator=gen)[:n].sort().values for n in row] for row in lengths]
    masks = []
    for j in range(len(lengths[0])):
        m = torch.full((B, width), -1, dtype=torch.long)
        for b in range(B):
            m[b, : len(real[b][j])] = real[b][j]
        masks.append(m)
    return masks, real


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert (got - want).abs().max().item() <= TOL * want.abs().max().item()


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_padded_batch_equals_each_sample_alone(attn_impl: str) -> None:
    enc, pred = _models(attn_impl)
    imgs = torch.randn(B, 3, 16, 16)
    masks_enc, real_enc = _padded(CTX_LEN, 1)
    masks_pred, real_pred = _padded(TGT_LEN, 2)
    z = enc(imgs, masks_enc)  # [NENC * B, K_ctx, D]
    out = pred(z, masks_enc, masks_pred)  # [NPRED * NENC * B, K_pred, D]
    for b in range(B):
        for e in range(NENC):
            ctx = real_enc[b][e][None]
            alone = enc(imgs[b : b + 1], [ctx])
            _close(z[e * B + b, : ctx.shape[1]], alone[0])
            for p in range(NPRED):
                tgt = real_pred[b][p][None]
                want = pred(alone, [ctx], [tgt])[0]
                _close(out[(p * NENC + e) * B + b, : tgt.shape[1]], want)


def test_loss_and_gradients_count_real_target_tokens_only() -> None:
    enc, pred = _models("sdpa")
    imgs, target_out = torch.randn(B, 3, 16, 16), torch.randn(B, 16, 32)
    masks_enc, real_enc = _padded(CTX_LEN, 3)
    masks_pred, real_pred = _padded(TGT_LEN, 4)
    out = pred(enc(imgs, masks_enc), masks_enc, masks_pred)
    targets = make_targets(target_out, masks_pred, NENC)
    loss = jepa_loss(out, targets, "smooth_l1", valid_targets(masks_pred, NENC))
    loss.backward()
    got = {n: p.grad.clone() for n, p in [*enc.named_parameters(), *pred.named_parameters()]
           if p.grad is not None}  # fmt: skip
    enc.zero_grad(), pred.zero_grad()
    rows_pred, rows_tgt = [], []  # every real (sample, view, block) computed alone
    for b in range(B):
        for e in range(NENC):
            ctx = real_enc[b][e][None]
            z = enc(imgs[b : b + 1], [ctx])
            for p in range(NPRED):
                tgt = real_pred[b][p][None]
                rows_pred.append(pred(z, [ctx], [tgt])[0])
                rows_tgt.append(make_targets(target_out[b : b + 1], [tgt], 1)[0])
    want = jepa_loss(torch.cat(rows_pred), torch.cat(rows_tgt), "smooth_l1")
    want.backward()
    _close(loss.detach(), want.detach())
    for name, grad in got.items():
        ref = dict([*enc.named_parameters(), *pred.named_parameters()])[name].grad
        assert (grad - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-12, name


def test_activation_checkpointing_keeps_the_key_padding() -> None:
    """The key-padding mask is bound into the checkpointed forward, so the backward's
    recomputation uses it too: same output and gradients as without checkpointing."""
    plain, _ = _models("sdpa")
    ckpt = copy.deepcopy(plain)
    apply_activation_checkpointing(ckpt.blocks, every=1)
    imgs = torch.randn(B, 3, 16, 16)
    masks_enc, _ = _padded(CTX_LEN, 5)
    weight = torch.randn(NENC * B, 9, 32)
    outs = []
    for model in (plain, ckpt):
        out = model.train()(imgs, masks_enc)
        (out * weight * torch.cat(masks_enc)[..., None].ge(0)).sum().backward()
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=name)


def test_unpadded_masks_take_the_unpadded_path() -> None:
    masks = [torch.tensor([[0, 3], [1, 2]])]
    assert key_padding(masks) is None
    assert valid_targets(masks, 2) is None
    x = torch.randn(2, 4, 5)
    padded = [torch.tensor([[0, -1], [1, 2]])]
    torch.testing.assert_close(key_padding(padded), torch.tensor([[True, False], [True, True]]))
    out = apply_masks(x, padded)  # padding gathers token 0, a finite placeholder
    assert torch.equal(out[0, 1], x[0, 0]) and torch.equal(out[1], x[1, 1:3])


def test_padded_loss_equals_the_loss_over_real_rows() -> None:
    pred, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    for kind in ("smooth_l1", "l2"):
        want = jepa_loss(pred[valid][None], target[valid][None], kind)
        assert torch.equal(jepa_loss(pred, target, kind, valid), want)
        assert not torch.equal(jepa_loss(pred, target, kind), want)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`


def test_length_chunks_sort_by_the_longest_list_and_split_evenly() -> None:
    from ijepa_ds.models.tokens import length_chunks

    masks, _ = _padded(CTX_LEN, 5)  # lengths per sample (longest list): 9, 9, 6
    parts = length_chunks(masks, 2)
    assert [idx.tolist() for idx, _ in parts] == [[2, 0], [1]]
    assert [width for _, width in parts] == [9, 9]
    assert [w for _, w in length_chunks(masks, 5)] == [6, 9, 9]  # at most one part per sample
