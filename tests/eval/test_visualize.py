"""PCA maps: structure shows up as colour, the grid has the documented size, the PNG decodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ijepa_ds.eval.visualize import pca_components, pca_rgb, render_pca_grid, write_png
from ijepa_ds.models import VisionTransformer


def test_two_feature_groups_become_two_flat_colours():
    # 2 images on a 4x4 grid: left-half patches carry vector a, right-half vector b.
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    left = torch.arange(16) % 4 < 2
    feats = torch.where(left[None, :, None], a, b).expand(2, 16, 32)
    feats = feats + 1e-4 * torch.randn(2, 16, 32, generator=gen)
    rgb = pca_rgb(feats, (4, 4))
    assert rgb.shape == (2, 3, 4, 4) and rgb.min() >= 0 and rgb.max() <= 1
    red = rgb[:, 0]  # first component: the one that separates the halves
    left_red, right_red = red[:, :, :2], red[:, :, 2:]
    assert (left_red.mean() - right_red.mean()).abs() > 0.9  # opposite ends of the scale
    assert left_red.max() - left_red.min() < 0.05 and right_red.max() - right_red.min() < 0.05


def test_components_are_deterministic_with_fixed_signs():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    p1, p2 = pca_components(x), pca_components(-x)
    assert p1.shape == (50, 3)
    # Negating the data flips every axis; the sign rule flips the projections back.
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-5)
    peak = p1.gather(0, p1.abs().argmax(dim=0, keepdim=True))
    assert (peak > 0).all()
    # Fewer dimensions than components: zero-padded.
    assert pca_components(x[:, :2])[:, 2].abs().max() == 0


def test_render_writes_a_decodable_png_of_the_documented_size(tmp_path):
    torch.manual_seed(0)
    enc = VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2
    )
    imgs = torch.randn(5, 1, 16, 16)
    grid = render_pca_grid(enc, imgs, mean=(0.5,), std=(0.25,), upscale=3, pairs_per_row=2, pad=2)
    # 5 pairs, 2 per row -> 3 rows of 48 px, 4 columns of 48 px, 2 px padding around each.
    assert grid.dtype == torch.uint8
    assert tuple(grid.shape) == (3, 3 * 48 + 4 * 2, 4 * 48 + 5 * 2)
    path = write_png(grid, tmp_path / "sub" / "pca.png")
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (grid.shape[2], grid.shape[1])
        decoded = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert torch.equal(decoded, grid)
    # First tile is the de-normalised grey image itself (x * 0.25 + 0.5, replicated to RGB).
    first = ((imgs[0, 0] * 0.25 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(grid[:, 2 : 2 + 48 : 3, 2 : 2 + 48 : 3], first.expand(3, 16, 16))


def test_write_png_rejects_other_layouts(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_png(torch.zeros(3, 4, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        write_png(torch.zeros(4, 4, 3, dtype=torch.uint8), tmp_path / "x.png")
