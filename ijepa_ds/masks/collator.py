"""Batch collation with masks, run inside DataLoader workers.

The collator holds only the sampler, whose masks are a pure function of (seed, sample
position): it pickles into workers and gives the same masks whichever worker, rank or resume
collates a given sample.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# What the collator needs from a sampler: positions [B] -> (masks_enc, masks_pred).
MaskSampler = Callable[[np.ndarray], tuple[list[torch.Tensor], list[torch.Tensor]]]


class MaskCollator:
    """Collates dataset items ``(img [C, H, W], label, position)`` into
    ``(imgs [B, C, H, W], labels [B] long, positions [B] long, masks_enc, masks_pred)`` with
    ``masks_enc``: list of nenc [B, K_enc] and ``masks_pred``: list of npred [B, K_pred]."""

    def __init__(self, sampler: MaskSampler) -> None:
        self.sampler = sampler

    def __call__(self, items: list[tuple[torch.Tensor, int, int]]) -> tuple:
        if not items:
            raise ValueError("MaskCollator got an empty batch")
        imgs = torch.stack([item[0] for item in items])
        labels = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        positions = torch.tensor([int(item[2]) for item in items], dtype=torch.long)
        masks_enc, masks_pred = self.sampler(positions.numpy())
        return imgs, labels, positions, masks_enc, masks_pred
