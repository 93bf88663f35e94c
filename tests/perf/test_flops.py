"""The analytic FLOP model: a hand count, torch's FLOP counter on the real modules, scaling."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ijepa_ds.config import load_config
from ijepa_ds.models import build_encoder, build_predictor
from ijepa_ds.perf.flops import (
    StepShape,
    TransformerShape,
    mfu,
    shape_from_config,
    stack_forward_flops,
    step_flops,
)

# Encoder width 4, 1 block, MLP 8; predictor width 2, 1 block, MLP 8; 1-channel 4x4 images
# with 2x2 patches (N = 4); 3 context tokens, 1 token per target, 2 targets.
TINY = StepShape(
    encoder=TransformerShape(dim=4, depth=1, mlp_hidden=8, num_heads=2),
    predictor=TransformerShape(dim=2, depth=1, mlp_hidden=8, num_heads=1),
    in_chans=1,
    patch_size=2,
    num_patches=4,
    k_enc=3,
    k_pred=1,
    nenc=1,
    npred=2,
)


def test_tiny_step_matches_a_hand_count():
    f = step_flops(TINY)
    patch = 2 * 4 * (1 * 2 * 2) * 4  # 2 x N x (C p^2) x D = 128
    # one encoder block on T tokens: 2 T (D*3D + D*D + 2 D*H) + 4 T^2 D
    enc_block_3 = 2 * 3 * (4 * 12 + 4 * 4 + 2 * 4 * 8) + 4 * 3 * 3 * 4  # 768 + 144
    enc_block_4 = 2 * 4 * (4 * 12 + 4 * 4 + 2 * 4 * 8) + 4 * 4 * 4 * 4  # 1024 + 256
    assert f.context_fwd == patch + enc_block_3 == 1040
    assert f.context_bwd == patch + 2 * enc_block_3 == 1952  # the image needs no gradient
    assert f.target_fwd == patch + enc_block_4 == 1408
    embed = 2 * 3 * 4 * 2  # context tokens 4 -> 2
    pred_block = 2 * 4 * (2 * 6 + 2 * 2 + 2 * 2 * 8) + 4 * 4 * 4 * 2  # T = 3 + 1 tokens
    proj = 2 * 1 * 2 * 4  # the target token 2 -> 4
    assert f.predictor_fwd == embed + 2 * pred_block + 2 * proj == 1104
    assert f.predictor_bwd == 2 * 1104
    assert f.model == f.hardware == 1040 + 1952 + 1408 + 1104 + 2208


def _real_modules(shape: StepShape):
    torch.manual_seed(0)
    grid = int(shape.num_patches**0.5)
    enc = build_encoder(
        "custom",
        img_size=grid * shape.patch_size,
        patch_size=shape.patch_size,
        in_chans=shape.in_chans,
        embed_dim=shape.encoder.dim,
        depth=shape.encoder.depth,
        num_heads=shape.encoder.num_heads,
        attn_impl="eager",  # FlopCounterMode counts eager attention's bmm exactly
    )
    pred = build_predictor(
        enc,
        shape.predictor.dim,
        shape.predictor.depth,
        num_heads=shape.predictor.num_heads,
        attn_impl="eager",
    )
    return enc, pred


def test_counts_agree_with_torch_flop_counter_on_the_real_modules():
    shape = StepShape(
        encoder=TransformerShape(dim=24, depth=2, mlp_hidden=96, num_heads=3),
        predictor=TransformerShape(dim=12, depth=2, mlp_hidden=48, num_heads=3),
        in_chans=3,
        patch_size=4,
        num_patches=16,
        k_enc=7,
        k_pred=3,
        nenc=1,
        npred=4,
        prune_last=True,  # the predictor's default, which _real_modules builds
    )
    enc, pred = _real_modules(shape)
    batch = 2
    imgs = torch.randn(batch, 3, 16, 16)
    masks_enc = [torch.stack([torch.randperm(16)[:7] for _ in range(batch)])]
    masks_pred = [torch.stack([torch.randperm(16)[:3] for _ in range(batch)]) for _ in range(4)]
    expected = step_flops(shape)
    with FlopCounterMode(display=False) as target_count, torch.no_grad():
        enc(imgs)
    assert target_count.get_total_flops() == batch * expected.target_fwd
    with FlopCounterMode(display=False) as fwd:
        z = pred(enc(imgs, masks_enc), masks_enc, masks_pred)
    assert fwd.get_total_flops() == batch * (expected.context_fwd + expected.predictor_fwd)
    with FlopCounterMode(display=False) as bwd:
        z.square().mean().backward()
    assert bwd.get_total_flops() == batch * (expected.context_bwd + expected.predictor_bwd)


def test_blocks_scale_with_depth_and_attention_quadratically_with_tokens():
    t = TransformerShape(dim=64, depth=3, mlp_hidden=256, num_heads=4)
    deeper = dataclasses.replace(t, depth=6)
    assert stack_forward_flops(deeper, 50, 2) == 2 * stack_forward_flops(t, 50, 2)
    assert stack_forward_flops(t, 50, 4) == 2 * stack_forward_flops(t, 50, 2)
    # matmuls are linear in tokens, the two attention products quadratic
    f1, f2, f4 = (stack_forward_flops(t, n, 1) for n in (1, 2, 4))
    quadratic = (f4 - 2 * f2) / 8  # 4 T^2 D depth per unit T^2
    assert quadratic == 4 * 64 * 3
    assert f1 == 3 * (2 * (64 * 192 + 64 * 64 + 2 * 64 * 256) + 4 * 64)


def test_vit_b16_target_forward_is_the_published_17_5_gmacs():
    cfg = load_config("vit_b16_in1k")
    shape = shape_from_config(cfg, k_enc=100, k_pred=30)
    # 196 tokens, no class token: 17.5 G multiply-adds (DeiT quotes 17.6 with the class token)
    assert step_flops(shape).target_fwd / 2 == pytest.approx(17.48e9, rel=2e-3)


def test_activation_checkpointing_adds_recompute_but_not_model_flops():
    plain, ckpt = step_flops(TINY), step_flops(TINY, act_ckpt_encoder=1, act_ckpt_predictor=1)
    assert ckpt.model == plain.model
    assert ckpt.recompute == stack_forward_flops(TINY.encoder, 3, 1) + stack_forward_flops(
        TINY.predictor, 4, 2
    )


def test_shape_from_config_resolves_the_presets():
    shape = shape_from_config(load_config("vit_h14_in1k"), k_enc=70, k_pred=45)
    assert (shape.encoder.dim, shape.encoder.depth, shape.encoder.mlp_hidden) == (1280, 32, 5120)
    assert (shape.predictor.dim, shape.predictor.depth, shape.predictor.num_heads) == (384, 12, 16)
    assert (shape.num_patches, shape.patch_size, shape.npred) == (256, 14, 4)
    giant = shape_from_config(load_config("vit_g16_in22k"), k_enc=70, k_pred=45)
    assert giant.encoder.mlp_hidden == 6144 and giant.predictor.mlp_hidden == 4 * 384


def test_mfu():
    assert mfu(10.0, 1e12, 1e14) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1.0, 1.0, 0.0)
