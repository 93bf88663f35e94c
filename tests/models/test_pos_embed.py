"""Fixed 2D sin-cos tables and their adaptation to other patch grids."""

import math

import pytest
import torch

from ijepa_ds.models import (
    VisionTransformer,
    VisionTransformerPredictor,
    adapt_pos_embed,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    pos_embed_for_grid,
    resize_pos_embed,
)


def test_1d_table_closed_form() -> None:
    table = get_1d_sincos_pos_embed(4, torch.tensor([0.0, 1.0, 7.0]))
    for row, p in zip(table, (0.0, 1.0, 7.0)):
        # Frequencies 1 and 1/100 for a width of 4.
        expected = [math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)]
        assert row.tolist() == pytest.approx(expected, abs=1e-12)


def test_2d_layout_is_raster_order_columns_then_rows() -> None:
    grid_h, grid_w, dim = 3, 5, 16
    table = get_2d_sincos_pos_embed(dim, (grid_h, grid_w))
    assert table.shape == (15, 16) and table.dtype == torch.float32
    for r in range(grid_h):
        for c in range(grid_w):
            col = get_1d_sincos_pos_embed(8, torch.tensor([float(c)]))[0]
            row = get_1d_sincos_pos_embed(8, torch.tensor([float(r)]))[0]
            assert torch.equal(table[r * grid_w + c], torch.cat([col, row]).float())
    assert torch.equal(get_2d_sincos_pos_embed(dim, 4), get_2d_sincos_pos_embed(dim, (4, 4)))
    with pytest.raises(ValueError, match="multiple of 4"):
        get_2d_sincos_pos_embed(18, 4)


@pytest.mark.parametrize("mode", ["sincos", "bicubic"])
def test_native_grid_returns_the_stored_table(mode: str) -> None:
    stored = get_2d_sincos_pos_embed(32, 6)[None]
    assert pos_embed_for_grid(stored, 6, (6, 6), mode) is stored
    assert torch.equal(resize_pos_embed(stored, 6, 6), stored)


def test_regenerated_table_at_double_grid_keeps_every_position() -> None:
    stored = get_2d_sincos_pos_embed(32, 6)[None]
    doubled = pos_embed_for_grid(stored, 6, 12, mode="sincos")
    assert torch.equal(doubled[0], get_2d_sincos_pos_embed(32, 12))
    assert doubled.shape == (1, 144, 32)
    assert torch.unique(doubled[0], dim=0).shape[0] == 144
    # Token 0 is patch (0, 0): sin(0)=0 and cos(0)=1 in both halves (the reference's
    # interpolation took it for a [cls] token and dropped it).
    assert torch.equal(doubled[0, 0], torch.tensor(([0.0] * 8 + [1.0] * 8) * 2))


def test_bicubic_resize_keeps_the_first_patch_and_constants() -> None:
    constant = torch.full((1, 16, 8), 0.5)
    assert torch.allclose(resize_pos_embed(constant, 4, (8, 6)), torch.full((1, 48, 8), 0.5))
    marker = torch.zeros(1, 16, 8)
    marker[0, 0, 0] = 1.0  # top-left patch only
    resized = resize_pos_embed(marker, 4, 8)
    assert resized.shape == (1, 64, 8)
    assert resized[0, :, 0].argmax().item() == 0
    assert abs(resized[0, -1, 0].item()) < 1e-6
    with pytest.raises(ValueError, match="grid 3x3 needs 9"):
        resize_pos_embed(marker, 3, 6)
    with pytest.raises(ValueError, match="unknown pos_interp mode 'nearest'"):
        pos_embed_for_grid(marker, 4, 8, mode="nearest")


@pytest.mark.parametrize("mode", ["sincos", "bicubic"])
def test_adapted_state_dict_loads_into_a_larger_model(mode: str) -> None:
    torch.manual_seed(0)
    cfg = dict(patch_size=4, embed_dim=32, depth=1, num_heads=2, pos_interp=mode)
    small = VisionTransformer(img_size=16, **cfg).eval()
    large = VisionTransformer(img_size=32, **cfg).eval()
    state = small.state_dict()
    adapted = adapt_pos_embed(state, new_grid=8, mode=mode)
    assert state["pos_embed"].shape == (1, 16, 32)  # input left untouched
    large.load_state_dict(adapted, strict=True)
    if mode == "sincos":
        assert torch.equal(adapted["pos_embed"][0], get_2d_sincos_pos_embed(32, 8))
    # The small model fed 32 px images computes the same table on the fly.
    imgs = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(small(imgs), large(imgs), atol=1e-6, rtol=0)


def test_adapt_predictor_table_and_errors() -> None:
    pred = VisionTransformerPredictor(
        num_patches=16, embed_dim=32, predictor_embed_dim=16, depth=1, num_heads=2
    )
    adapted = adapt_pos_embed(pred.state_dict(), (4, 6), key="predictor_pos_embed")
    wide = VisionTransformerPredictor(
        grid_size=(4, 6), embed_dim=32, predictor_embed_dim=16, depth=1, num_heads=2
    )
    wide.load_state_dict(adapted, strict=True)
    with pytest.raises(KeyError, match="pos_embed"):
        adapt_pos_embed(pred.state_dict(), 8)
    with pytest.raises(ValueError, match="not square, pass old_grid"):
        adapt_pos_embed({"pos_embed": torch.zeros(1, 24, 16)}, 8, mode="bicubic")


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
