"""Mask overlays: the right colours at known patches, grey to RGB, un-normalisation, PNG."""

from __future__ import annotations

import torch
from torchvision.io import decode_png, read_file

from ijepa_ds.masks import MultiBlockMaskSampler, render_mask_grid, render_mask_overlay, save_png
from ijepa_ds.masks.overlay import CONTEXT_COLOUR, TARGET_COLOURS, TINT


def _tinted(colour, base=(0, 0, 0)):
    return [round(b * (1 - TINT) + c * TINT) for b, c in zip(base, colour, strict=True)]


def _pixel(img, y, x):
    return img[:, y, x].tolist()


def test_colours_at_known_patches_on_a_black_image():
    # 4x4 patches of 4 pixels: context = patches 0 and 1, targets = patch 5 and patches 10, 11
    img = torch.zeros(3, 16, 16)
    out = render_mask_overlay(
        img, torch.tensor([0, 1]), [torch.tensor([5]), torch.tensor([10, 11])], patch_size=4
    )
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert _pixel(out, 2, 2) == _tinted(CONTEXT_COLOUR)  # inside patch 0
    assert _pixel(out, 1, 6) == _tinted(CONTEXT_COLOUR)  # inside patch 1
    assert _pixel(out, 6, 6) == _tinted(TARGET_COLOURS[0])  # inside patch 5
    assert _pixel(out, 4, 4) == list(TARGET_COLOURS[0])  # outline of patch 5
    assert _pixel(out, 7, 5) == list(TARGET_COLOURS[0])
    assert _pixel(out, 10, 10) == _tinted(TARGET_COLOURS[1])  # inside the second target
    assert _pixel(out, 8, 12) == list(TARGET_COLOURS[1])  # its top edge spans both patches
    assert _pixel(out, 10, 11) == _tinted(TARGET_COLOURS[1])  # no line between its patches
    assert _pixel(out, 13, 1) == [0, 0, 0]  # untouched patch 12


def test_padding_entries_paint_nothing():
    # -1 is padding (mask.context_policy keep_all / group_min); it must not paint the last patch
    img = torch.zeros(3, 16, 16)
    out = render_mask_overlay(img, torch.tensor([0, -1, -1]), [torch.tensor([5])], patch_size=4)
    assert _pixel(out, 2, 2) == _tinted(CONTEXT_COLOUR)
    assert _pixel(out, 14, 14) == [0, 0, 0]  # patch 15, which -1 would index


def test_grey_normalised_image_is_unnormalised_and_repeated_to_rgb():
    # 2x2 patches of 4 pixels: context = patch 0, target = patch 3, patches 1 and 2 untouched
    img = torch.full((1, 8, 8), (0.2 - 0.5) / 0.25)  # grey 0.2 after un-normalising
    out = render_mask_overlay(img, torch.tensor([0]), [torch.tensor([3])], 4, [0.5], [0.25])
    grey = (0.2 * 255,) * 3
    assert out.shape == (3, 8, 8)
    assert _pixel(out, 1, 6) == [51, 51, 51] and _pixel(out, 6, 1) == [51, 51, 51]
    assert _pixel(out, 1, 1) == _tinted(CONTEXT_COLOUR, grey)
    assert _pixel(out, 6, 6) == _tinted(TARGET_COLOURS[0], grey)
    assert _pixel(out, 4, 4) == list(TARGET_COLOURS[0])


def test_grid_of_sampled_masks_and_png_roundtrip(tmp_path):
    sampler = MultiBlockMaskSampler((7, 7), 8, seed=0, min_keep=4)
    masks_enc, masks_pred = sampler(range(8))
    imgs = torch.rand(8, 3, 28, 28)
    grid = render_mask_grid(imgs, masks_enc, masks_pred, patch_size=4, max_images=6, ncols=3)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 * 30 + 2, 3 * 30 + 2)
    tile = render_mask_overlay(imgs[4], masks_enc[0][4], [m[4] for m in masks_pred], 4)
    assert torch.equal(grid[:, 32:60, 32:60], tile)  # second row, second column
    assert (grid[:, :2] == 255).all()  # white padding
    path = tmp_path / "masks.png"
    save_png(grid, path)
    assert torch.equal(decode_png(read_file(str(path))), grid)
