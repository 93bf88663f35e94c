"""PCA maps of patch features: what the target encoder separates, drawn as colours.

One PCA is fitted jointly over all patches of all images shown (so colours are comparable
across images); the first three components become R, G, B, each scaled to [0, 1] between its
1st and 99th percentile. Each image is drawn next to its map, the map upsampled (nearest) from
the patch grid to the image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ijepa_ds.models import VisionTransformer


def pca_components(features: torch.Tensor, num: int = 3) -> torch.Tensor:
    """features: [M, D] -> projections [M, num] on the top principal axes (zeros past rank).

    Signs are fixed so that each component's largest-magnitude projection is positive, which
    makes the colours reproducible across runs and devices.
    """
    x = features.double() - features.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[:num].T
    peak = proj.gather(0, proj.abs().argmax(dim=0, keepdim=True))
    proj = proj * torch.where(peak < 0, -1.0, 1.0)
    if proj.shape[1] < num:
        proj = F.pad(proj, (0, num - proj.shape[1]))
    return proj.float()


def pca_rgb(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """features: [B, N, D] patch features, N = gh * gw -> colour maps [B, 3, gh, gw] in [0, 1]."""
    b, n, d = features.shape
    gh, gw = grid
    if n != gh * gw:
        raise ValueError(f"{n} patches do not fill a {gh}x{gw} grid")
    proj = pca_components(features.reshape(b * n, d))
    lo = torch.quantile(proj, 0.01, dim=0)
    hi = torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0.0, 1.0)
    return rgb.reshape(b, gh, gw, 3).permute(0, 3, 1, 2)


def denormalize(imgs: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """imgs: [B, C, H, W] normalised -> [B, 3, H, W] in [0, 1] (grey repeated to RGB)."""
    m = torch.tensor(mean, dtype=imgs.dtype, device=imgs.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=imgs.dtype, device=imgs.device).view(1, -1, 1, 1)
    out = (imgs * s + m).clamp(0.0, 1.0)
    return out.expand(-1, 3, -1, -1) if out.shape[1] == 1 else out


def tile(tiles: torch.Tensor, columns: int, pad: int = 2, background: float = 1.0) -> torch.Tensor:
    """tiles: [T, 3, h, w] -> one canvas [3, H, W], row-major, ``pad`` pixels around each."""
    t, _, h, w = tiles.shape
    rows = math.ceil(t / columns)
    canvas = torch.full(
        (3, rows * h + (rows + 1) * pad, columns * w + (columns + 1) * pad), background
    )
    for i in range(t):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[:, top : top + h, left : left + w] = tiles[i]
    return canvas


@torch.no_grad()
def render_pca_grid(
    encoder: VisionTransformer,
    imgs: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    upscale: int = 1,
    pairs_per_row: int = 4,
    pad: int = 2,
) -> torch.Tensor:
    """Images and their PCA maps side by side: uint8 [3, H, W].

    imgs: [B, C, h, w] normalised with (mean, std). Each image and its map are ``upscale``
    times larger than h x w; ``min(B, pairs_per_row)`` (image, map) pairs per row, so
    H = rows * h' + (rows + 1) * pad and W = 2 p * w' + (2 p + 1) * pad with h' = upscale h.
    """
    was_training = encoder.training
    device = next(encoder.parameters()).device
    feats = encoder.eval()(imgs.to(device)).float().cpu()
    encoder.train(was_training)
    h, w = imgs.shape[-2:]
    grid = (h // encoder.patch_size, w // encoder.patch_size)
    maps = F.interpolate(pca_rgb(feats, grid), size=(h, w), mode="nearest")
    pictures = denormalize(imgs.float().cpu(), mean, std)
    tiles = torch.stack([pictures, maps], dim=1).flatten(0, 1)  # image_0, map_0, image_1, ...
    if upscale > 1:
        tiles = F.interpolate(tiles, scale_factor=upscale, mode="nearest")
    canvas = tile(tiles, columns=2 * min(len(imgs), pairs_per_row), pad=pad)
    return (canvas * 255.0).round().clamp(0, 255).to(torch.uint8)


def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """Save uint8 [3, H, W] as a PNG (parent folders created); returns the path."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
    return path
