"""Mask overlays for TensorBoard and for eyeballing the sampler.

Colours (Okabe-Ito, readable with colour-blindness): the context is tinted bluish green; target
block ``i`` is tinted with ``TARGET_COLOURS[i % 6]`` and outlined (1 pixel, solid) in the same
colour; patches in neither are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.io import write_png

CONTEXT_COLOUR = (0, 158, 115)
TARGET_COLOURS = (
    (230, 159, 0),
    (86, 180, 233),
    (213, 94, 0),
    (204, 121, 167),
    (240, 228, 66),
    (0, 114, 178),
)
TINT = 0.45  # weight of the colour in a tinted pixel


def _to_rgb(img: torch.Tensor, mean, std) -> torch.Tensor:
    """img [C, H, W] (float in [0, 1] or normalised with mean/std, or uint8) -> float [3, H, W]
    in [0, 1]; grey (C = 1) is repeated to RGB."""
    x = img.detach().cpu().float()
    if img.dtype == torch.uint8:
        x = x / 255.0
    if (mean is None) != (std is None):
        raise ValueError("render_mask_overlay: give both mean and std, or neither")
    if mean is not None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        x = x * std_t + mean_t
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    if x.shape[0] != 3:
        raise ValueError(f"render_mask_overlay: expected 1 or 3 channels, got {x.shape[0]}")
    return x.clamp(0.0, 1.0)


def _pixel_mask(indices: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Patch indices [K] (raster order on the (H // p) x (W // p) grid; -1 = padding, ignored)
    -> bool [H, W]."""
    grid_h, grid_w = height // patch_size, width // patch_size
    cells = torch.zeros(grid_h * grid_w, dtype=torch.bool)
    indices = indices.long().cpu()
    cells[indices[indices >= 0]] = True
    cells = cells.view(grid_h, grid_w).repeat_interleave(patch_size, 0)
    cells = cells.repeat_interleave(patch_size, 1)
    out = torch.zeros(height, width, dtype=torch.bool)
    out[: cells.shape[0], : cells.shape[1]] = cells
    return out


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of bool mask [H, W] with a 4-neighbour outside it (beyond the image = outside)."""
    padded = torch.nn.functional.pad(mask[None].float(), (1, 1, 1, 1))[0].bool()
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _paint(rgb: torch.Tensor, mask: torch.Tensor, colour: Sequence[int], weight: float) -> None:
    """Blend ``colour`` into rgb [3, H, W] (float, [0, 1]) where mask [H, W], in place."""
    c = torch.tensor(colour, dtype=torch.float32).view(3, 1) / 255.0
    rgb[:, mask] = rgb[:, mask] * (1.0 - weight) + c * weight


def render_mask_overlay(
    img: torch.Tensor,
    mask_enc: torch.Tensor,
    masks_pred: Sequence[torch.Tensor],
    patch_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """One image with its masks drawn in. img: [C, H, W]; mask_enc: [K_enc] context patch
    indices; masks_pred: list of [K_pred] target patch indices. Returns uint8 [3, H, W]."""
    rgb = _to_rgb(img, mean, std)
    height, width = rgb.shape[1:]
    _paint(rgb, _pixel_mask(mask_enc, patch_size, height, width), CONTEXT_COLOUR, TINT)
    target_masks = [_pixel_mask(m, patch_size, height, width) for m in masks_pred]
    for i, mask in enumerate(target_masks):
        _paint(rgb, mask, TARGET_COLOURS[i % len(TARGET_COLOURS)], TINT)
    for i, mask in enumerate(target_masks):  # outlines last, so no tint covers them
        _paint(rgb, _outline(mask), TARGET_COLOURS[i % len(TARGET_COLOURS)], 1.0)
    return (rgb * 255.0).round().to(torch.uint8)


def render_mask_grid(
    imgs: torch.Tensor,
    masks_enc: Sequence[torch.Tensor],
    masks_pred: Sequence[torch.Tensor],
    patch_size: int,
    max_images: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ncols: int = 4,
    padding: int = 2,
) -> torch.Tensor:
    """Overlays of the first ``max_images`` images tiled ``ncols`` wide on a white background.

    imgs: [B, C, H, W]; masks_enc: list of nenc [B, K_enc] (the lists' union is the context
    drawn); masks_pred: list of npred [B, K_pred]. Returns uint8 [3, H', W'] with
    ``H' = rows * (H + padding) + padding`` and likewise for W'.
    """
    count = min(max_images, imgs.shape[0])
    if count < 1:
        raise ValueError("render_mask_grid needs at least one image")
    height, width = imgs.shape[-2:]
    cols = min(ncols, count)
    rows = math.ceil(count / cols)
    canvas = torch.full(
        (3, rows * (height + padding) + padding, cols * (width + padding) + padding),
        255,
        dtype=torch.uint8,
    )
    for b in range(count):
        tile = render_mask_overlay(
            imgs[b], torch.cat([m[b] for m in masks_enc]), [m[b] for m in masks_pred],
            patch_size, mean, std,
        )  # fmt: skip
        top = padding + (b // cols) * (height + padding)
        left = padding + (b % cols) * (width + padding)
        canvas[:, top : top + height, left : left + width] = tile
    return canvas


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write uint8 [3 or 1, H, W] to ``path`` as PNG."""
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(
            f"save_png expects uint8 [C, H, W], got {image.dtype} {tuple(image.shape)}"
        )
    write_png(image.detach().cpu().contiguous(), str(path))
