"""VisionTransformerPredictor and the token helpers it shares with the encoder and the loss."""

import math

import pytest
import torch

from ijepa_ds.models import (
    VisionTransformer,
    VisionTransformerPredictor,
    apply_attn_impl,
    apply_masks,
    build_predictor,
    get_2d_sincos_pos_embed,
    repeat_interleave_batch,
)

B, NUM_PATCHES, DIM, PRED_DIM = 2, 16, 32, 16


def small_predictor(**overrides) -> VisionTransformerPredictor:
    cfg = dict(
        num_patches=NUM_PATCHES, embed_dim=DIM, predictor_embed_dim=PRED_DIM, depth=2, num_heads=4
    )
    return VisionTransformerPredictor(**{**cfg, **overrides}).eval()


def random_masks(count: int, keep: int) -> list[torch.Tensor]:
    return [
        torch.stack([torch.randperm(NUM_PATCHES)[:keep] for _ in range(B)]) for _ in range(count)
    ]


def test_apply_masks_gathers_per_sample_and_stacks_mask_major() -> None:
    x = torch.randn(B, 6, 4)
    masks = [torch.tensor([[0, 5], [2, 3]]), torch.tensor([[1, 1], [4, 0]])]
    out = apply_masks(x, masks)
    assert out.shape == (2 * B, 2, 4)
    for m, mask in enumerate(masks):
        for b in range(B):
            assert torch.equal(out[m * B + b], x[b, mask[b]])
    with pytest.raises(ValueError, match="same K"):
        apply_masks(x, [masks[0], torch.zeros(B, 3, dtype=torch.long)])


def test_repeat_interleave_batch_repeats_chunks_in_place() -> None:
    x = torch.arange(6).reshape(6, 1)  # 3 chunks of batch 2
    out = repeat_interleave_batch(x, batch_size=2, repeat=2)
    assert out.flatten().tolist() == [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5]
    with pytest.raises(ValueError, match="not a multiple of batch_size=4"):
        repeat_interleave_batch(x, batch_size=4, repeat=2)


def test_output_shape_and_reference_ordering() -> None:
    torch.manual_seed(0)
    pred = small_predictor()
    nenc, npred, k_ctx, k_pred = 2, 3, 7, 4
    masks_x, masks = random_masks(nenc, k_ctx), random_masks(npred, k_pred)
    context = torch.randn(nenc * B, k_ctx, DIM)
    out = pred(context, masks_x, masks)
    assert out.shape == (npred * nenc * B, k_pred, DIM)
    # Row (p * nenc + e) * B + b: target block p of sample b from context view e, predicted
    # on its own (each target block is a separate sequence in the stacked batch).
    for p in range(npred):
        for e in range(nenc):
            alone = pred(context[e * B : (e + 1) * B], [masks_x[e]], [masks[p]])
            rows = slice((p * nenc + e) * B, (p * nenc + e + 1) * B)
            torch.testing.assert_close(out[rows], alone, atol=1e-5, rtol=0)


def test_target_positions_select_the_prediction() -> None:
    torch.manual_seed(1)
    pred = small_predictor()
    masks_x = random_masks(1, 6)
    context = torch.randn(B, 6, DIM)
    first = torch.tensor([[0, 1, 2], [3, 4, 5]])
    second = torch.tensor([[0, 9, 2], [3, 4, 5]])  # one position changed in sample 0
    a, b = pred(context, masks_x, [first]), pred(context, masks_x, [second])
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)


def test_state_dict_keys_and_frozen_positions() -> None:
    pred = small_predictor(depth=1)
    per_block = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ]
    expected = [
        "mask_token",
        "predictor_pos_embed",
        "predictor_embed.weight",
        "predictor_embed.bias",
    ]
    expected += [f"predictor_blocks.0.{k}" for k in per_block]
    expected += [
        "predictor_norm.weight",
        "predictor_norm.bias",
        "predictor_proj.weight",
        "predictor_proj.bias",
    ]
    assert sorted(pred.state_dict()) == sorted(expected)
    assert not pred.predictor_pos_embed.requires_grad and pred.mask_token.requires_grad
    assert torch.equal(pred.predictor_pos_embed[0], get_2d_sincos_pos_embed(PRED_DIM, 4))


def test_init_statistics_and_rescale() -> None:
    torch.manual_seed(2)
    pred = VisionTransformerPredictor(
        num_patches=4, embed_dim=384, predictor_embed_dim=384, depth=2, num_heads=6, init_std=0.05
    )
    assert abs(pred.mask_token.std().item() - 0.05) < 0.05 * 0.15
    assert abs(pred.predictor_blocks[0].mlp.fc1.weight.std().item() - 0.05) < 0.05 * 0.03
    assert torch.count_nonzero(pred.predictor_proj.bias) == 0
    assert torch.all(pred.predictor_norm.weight == 1)
    torch.manual_seed(3)
    plain = small_predictor()
    torch.manual_seed(3)
    rescaled = small_predictor(rescale_init=True)
    for layer_id, (a, b) in enumerate(zip(plain.predictor_blocks, rescaled.predictor_blocks), 1):
        factor = math.sqrt(2.0 * layer_id)
        torch.testing.assert_close(b.mlp.fc2.weight, a.mlp.fc2.weight / factor)
        torch.testing.assert_close(b.attn.proj.weight, a.attn.proj.weight / factor)


def test_sdpa_and_eager_attention_agree() -> None:
    torch.manual_seed(4)
    pred = small_predictor()
    masks_x, masks = random_masks(1, 8), random_masks(4, 3)
    context = torch.randn(B, 8, DIM)
    with torch.no_grad():
        sdpa = pred(context, masks_x, masks)
        apply_attn_impl(pred, "eager")
        eager = pred(context, masks_x, masks)
    assert (sdpa - eager).abs().max().item() <= 1e-6


def test_build_predictor_follows_the_encoder_and_grids() -> None:
    encoder = VisionTransformer(img_size=(8, 12), patch_size=4, embed_dim=24, depth=1, num_heads=3)
    pred = build_predictor(encoder, predictor_embed_dim=12, depth=1)
    assert pred.grid_size == (2, 3) and pred.embed_dim == 24
    assert pred.predictor_blocks[0].attn.num_heads == 3
    masks_x = [torch.tensor([[0, 1, 2]])]
    context = encoder(torch.randn(1, 3, 8, 12), masks_x)
    assert pred(context, masks_x, [torch.tensor([[3, 5]])]).shape == (1, 2, 24)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_patches=12 is not a square"):
        VisionTransformerPredictor(num_patches=12)
    with pytest.raises(ValueError, match="exactly one of num_patches"):
        VisionTransformerPredictor(num_patches=16, grid_size=4)
    pred = small_predictor()
    with pytest.raises(ValueError, match="batch 3, 2 context"):
        pred(torch.randn(3, 5, DIM), random_masks(2, 5), random_masks(1, 2))


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
