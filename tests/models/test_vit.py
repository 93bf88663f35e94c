"""VisionTransformer encoder: presets, shapes, mask semantics, init, drop path, attention."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from ijepa_ds.models import (
    ENCODER_PRESETS,
    DropPath,
    VisionTransformer,
    apply_attn_impl,
    build_encoder,
    get_2d_sincos_pos_embed,
)


def small_encoder(**overrides) -> VisionTransformer:
    cfg = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4)
    return VisionTransformer(**{**cfg, **overrides}).eval()


def expected_param_count(embed_dim, depth, mlp_ratio, in_chans, patch_size, num_patches) -> int:
    """Independent count: patch conv, frozen positions, blocks, final norm."""
    d, hidden = embed_dim, int(embed_dim * mlp_ratio)
    attn = (3 * d * d + 3 * d) + (d * d + d)
    mlp = (d * hidden + hidden) + (hidden * d + d)
    block = attn + mlp + 4 * d  # two LayerNorms
    patch = in_chans * patch_size * patch_size * d + d
    return patch + num_patches * d + depth * block + 2 * d


def test_presets_hold_the_paper_numbers() -> None:
    dims = {k: (v["embed_dim"], v["depth"], v["num_heads"]) for k, v in ENCODER_PRESETS.items()}
    assert dims == {
        "tiny": (192, 12, 3),
        "small": (384, 12, 6),
        "base": (768, 12, 12),
        "large": (1024, 24, 16),
        "huge": (1280, 32, 16),
        "giant": (1408, 40, 16),
    }
    assert ENCODER_PRESETS["giant"]["mlp_ratio"] == 48 / 11


@pytest.mark.parametrize("name", sorted(ENCODER_PRESETS))
def test_every_preset_shapes_and_param_count_on_meta(name: str) -> None:
    # The meta device builds even ViT-G without allocating its weights.
    with torch.device("meta"):
        model = build_encoder(name, img_size=224, patch_size=14)
        imgs = torch.empty(2, 3, 224, 224)
        full = model(imgs)
        masked = model(imgs, [torch.zeros(2, 50, dtype=torch.long)] * 3)
    preset = ENCODER_PRESETS[name]
    dim = preset["embed_dim"]
    assert full.shape == (2, 256, dim) and masked.shape == (6, 50, dim)
    assert len(model.blocks) == preset["depth"]
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_param_count(
        dim, preset["depth"], preset.get("mlp_ratio", 4.0), 3, 14, 256
    )
    if name == "giant":
        assert model.blocks[0].mlp.fc1.out_features == 6144
        assert 1.0e9 < count < 1.02e9


def test_tiny_preset_runs_for_real() -> None:
    model = build_encoder("tiny", img_size=32, patch_size=16).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 4, 192) and torch.isfinite(out).all()


def test_build_encoder_overrides_custom_and_errors() -> None:
    model = build_encoder("small", img_size=32, patch_size=8, depth=2)
    assert (model.embed_dim, len(model.blocks), model.grid_size) == (384, 2, (4, 4))
    custom = build_encoder("custom", img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2)
    assert custom.embed_dim == 8
    with pytest.raises(ValueError, match="unknown encoder preset 'gigantic'"):
        build_encoder("gigantic")
    with pytest.raises(ValueError, match="custom.*num_heads"):
        build_encoder("custom", embed_dim=8, depth=1)
    with pytest.raises(ValueError, match="attn_impl 'flash'"):
        small_encoder(attn_impl="flash")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        small_encoder(img_size=18)


def test_state_dict_keys_match_the_reference_layout() -> None:
    model = small_encoder(depth=2)
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
    expected = ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    expected += [f"blocks.{i}.{k}" for i in range(2) for k in per_block]
    expected += ["norm.weight", "norm.bias"]
    assert list(model.state_dict()) == expected
    # A frozen Parameter (not a buffer), so reference-style optimizer groups see it.
    pos = dict(model.named_parameters())["pos_embed"]
    assert pos.shape == (1, 16, 32) and not pos.requires_grad


def test_mask_selects_tokens_after_positions_are_added() -> None:
    torch.manual_seed(0)
    model = small_encoder()
    imgs = torch.randn(2, 3, 16, 16)
    full = model(imgs)
    identity = torch.arange(16).repeat(2, 1)
    torch.testing.assert_close(model(imgs, [identity]), full, atol=1e-6, rtol=0)
    # Attention is permutation-equivariant, so a permuting mask must permute the output
    # exactly when positions travel with their patches (added before masking).
    perm = torch.stack([torch.randperm(16), torch.randperm(16)])
    permuted = model(imgs, perm)
    expected = torch.stack([full[b, perm[b]] for b in range(2)])
    torch.testing.assert_close(permuted, expected, atol=1e-5, rtol=0)


def test_several_masks_stack_mask_major_and_per_sample() -> None:
    torch.manual_seed(1)
    model = small_encoder()
    imgs = torch.randn(3, 3, 16, 16)
    masks = [torch.stack([torch.randperm(16)[:5] for _ in range(3)]) for _ in range(2)]
    out = model(imgs, masks)
    assert out.shape == (6, 5, 32)
    for m, mask in enumerate(masks):
        for b in range(3):
            alone = model(imgs[b : b + 1], [mask[b : b + 1]])
            torch.testing.assert_close(out[m * 3 + b], alone[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"masks\[0\] has shape \(2, 5\)"):
        model(imgs, [masks[0][:2]])


def test_single_channel_images() -> None:
    # Fashion-MNIST: 28x28 grey, fed as one channel.
    model = VisionTransformer(
        img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2
    ).eval()
    assert model.patch_embed.proj.weight.shape == (32, 1, 4, 4)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 49, 32)


@pytest.mark.parametrize("pos_interp", ["sincos", "bicubic"])
def test_other_input_sizes_get_positions_for_their_grid(pos_interp: str) -> None:
    model = small_encoder(pos_interp=pos_interp)
    assert model(torch.randn(2, 3, 32, 24)).shape == (2, 48, 32)
    with pytest.raises(ValueError, match="not a multiple of patch_size=4"):
        model(torch.randn(2, 3, 18, 16))


def test_sdpa_and_eager_attention_agree() -> None:
    torch.manual_seed(2)
    model = small_encoder(depth=3)
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        sdpa = model(imgs)
        apply_attn_impl(model, "eager")
        eager = model(imgs)
    assert (sdpa - eager).abs().max().item() <= 1e-6


def test_drop_path_rates_rise_linearly_and_vanish_in_eval() -> None:
    torch.manual_seed(3)
    noisy = small_encoder(depth=3, drop_path_rate=0.4, drop_rate=0.1, attn_drop_rate=0.1)
    assert [b.drop_path.drop_prob for b in noisy.blocks] == pytest.approx([0.0, 0.2, 0.4])
    clean = small_encoder(depth=3)
    clean.load_state_dict(noisy.state_dict())
    imgs = torch.randn(4, 3, 16, 16)
    assert torch.equal(noisy.eval()(imgs), clean(imgs))
    noisy.train()
    assert not torch.allclose(noisy(imgs), noisy(imgs))


def test_drop_path_drops_whole_samples_and_keeps_the_mean() -> None:
    layer = DropPath(0.25)
    x = torch.ones(4000, 3, 2)
    assert layer.eval()(x) is x
    out = layer.train()(x)
    per_sample = out.reshape(4000, -1)
    kept = per_sample[:, 0] != 0
    # Each sample is either zeroed or scaled by 1 / keep_prob as a whole.
    assert torch.all(per_sample[~kept] == 0)
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.03


def test_reference_init_statistics() -> None:
    torch.manual_seed(4)
    model = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=192, depth=2, num_heads=3, init_std=0.02
    )
    weights = [model.patch_embed.proj.weight]
    for block in model.blocks:
        weights += [
            block.attn.qkv.weight,
            block.attn.proj.weight,
            block.mlp.fc1.weight,
            block.mlp.fc2.weight,
        ]
    for w in weights:
        assert abs(w.std().item() - 0.02) < 0.02 * 0.05, w.shape
        assert abs(w.mean().item()) < 0.002
    # Reference truncation bounds are absolute [-2, 2], not +-2 std: tails beyond 3 std exist.
    assert (model.blocks[0].mlp.fc1.weight.abs() > 0.06).any()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        if "norm" in name and name.endswith("weight"):
            assert torch.all(p == 1), name
    assert torch.equal(model.pos_embed[0], get_2d_sincos_pos_embed(192, 2))


def test_rescale_init_divides_proj_and_fc2_by_sqrt_2l() -> None:
    torch.manual_seed(5)
    plain = small_encoder(depth=3)
    torch.manual_seed(5)
    rescaled = small_encoder(depth=3, rescale_init=True)
    for layer_id, (a, b) in enumerate(zip(plain.blocks, rescaled.blocks), start=1):
        factor = math.sqrt(2.0 * layer_id)
        torch.testing.assert_close(b.attn.proj.weight, a.attn.proj.weight / factor)
        torch.testing.assert_close(b.mlp.fc2.weight, a.mlp.fc2.weight / factor)
        assert torch.equal(b.attn.qkv.weight, a.attn.qkv.weight)
        assert torch.equal(b.mlp.fc1.weight, a.mlp.fc1.weight)


def test_blocks_can_be_wrapped_by_activation_checkpointing() -> None:
    torch.manual_seed(6)
    model = small_encoder()
    assert isinstance(model.blocks, torch.nn.ModuleList)
    x = torch.randn(2, 16, 32, requires_grad=True)
    block = model.blocks[0]
    direct = block(x)
    (grad_direct,) = torch.autograd.grad(direct.sum(), x)
    wrapped = checkpoint(block, x, use_reentrant=False)
    (grad_wrapped,) = torch.autograd.grad(wrapped.sum(), x)
    assert torch.equal(direct, wrapped) and torch.equal(grad_direct, grad_wrapped)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
