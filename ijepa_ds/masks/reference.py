"""Reference-compatible masks (``mask.sampler=reference``), for ablations against the published
I-JEPA sampler. It keeps that sampler's behaviour, defects included:

- block sizes per batch from ``torch.Generator().manual_seed(seed + step)``, one ``torch.rand``
  draw driving both the scale and the aspect of a block (with ``seed=0`` this is the reference's
  batch-counter seeding), target size first, then context size; sides capped at ``H - 1`` and
  ``W - 1``;
- corners from ``randint(0, H - h)``: blocks never touch the last row or column, and at 224/14
  and 224/16 the context block is always the top-left one;
- a block is valid only with MORE than ``min_keep`` patches; a context that fails 20 times drops
  the last target's exclusion (then the next one, ...), so it may overlap targets;
- every list is cut to the shortest in the micro-batch, keeping the raster-order prefix;
- positions come from a generator seeded by (seed, step) only, so every rank (every micro-batch
  of the step with the same size) draws the same masks.

What differs on purpose: the reference loops forever when a target (or context) block cannot
exceed ``min_keep`` patches; here the settings are rejected up front (conservatively: every
scale/aspect pair of the ranges is checked, not only those on the shared-draw diagonal), and
``block_sizes`` raises instead of hanging if a drawn size is still too small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ijepa_ds.masks.base import BlockMaskSampler
from ijepa_ds.masks.geometry import check_basic_settings, reachable_block_dims

_RELAX_AFTER = 20  # failed context draws before one target exclusion is dropped (reference)


def reference_block_size(
    rand: float, scale: Sequence[float], aspect: Sequence[float], grid_h: int, grid_w: int
) -> tuple[int, int]:
    """The reference size rule: one uniform ``rand`` sets both scale and aspect -> (h, w)."""
    n = int(grid_h * grid_w * (scale[0] + rand * (scale[1] - scale[0])))
    ratio = aspect[0] + rand * (aspect[1] - aspect[0])
    h = int(round(math.sqrt(n * ratio)))
    w = int(round(math.sqrt(n / ratio)))
    return min(h, grid_h - 1), min(w, grid_w - 1)


def validate_reference_settings(
    grid_h: int,
    grid_w: int,
    enc_scale: Sequence[float],
    pred_scale: Sequence[float],
    aspect_ratio: Sequence[float],
    nenc: int,
    npred: int,
    min_keep: int,
) -> None:
    """Reject settings on which the reference sampler could loop forever (``ValueError``)."""
    check_basic_settings(grid_h, grid_w, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep)
    if grid_h < 2 or grid_w < 2:
        raise ValueError(f"grid_size=({grid_h}, {grid_w}): mask.sampler=reference needs >= 2x2")
    caps = {"max_h": grid_h - 1, "max_w": grid_w - 1, "min_side": 0}
    ph, pw = reachable_block_dims(grid_h, grid_w, pred_scale, aspect_ratio, **caps)[0]
    if ph * pw <= min_keep:
        raise ValueError(
            f"mask.min_keep={min_keep}: with mask.sampler=reference a target block must hold MORE "
            f"than min_keep patches, but mask.pred_mask_scale={tuple(pred_scale)} and "
            f"mask.aspect_ratio={tuple(aspect_ratio)} can give {ph}x{pw} = {ph * pw} on the "
            f"{grid_h}x{grid_w} grid (the reference sampler would loop forever)"
        )
    eh, ew = reachable_block_dims(grid_h, grid_w, enc_scale, (1.0, 1.0), **caps)[0]
    if eh * ew <= min_keep:
        raise ValueError(
            f"mask.enc_mask_scale={tuple(enc_scale)} can give a {eh}x{ew} context block on the "
            f"{grid_h}x{grid_w} grid, not more than mask.min_keep={min_keep} (reference rule)"
        )


def _context_indices(rng, allowed: np.ndarray, hw: tuple[int, int], min_keep: int) -> np.ndarray:
    """One context mask the reference way. allowed: [npred + 1, H, W] bool, entry k = cells
    outside the first k targets of the sample. Returns raster-ordered indices [K]."""
    grid_h, grid_w = allowed.shape[1:]
    tries, failures = 0, 0
    while True:  # bounded: after 20 * npred failures no exclusion is left (validated area)
        top = rng.integers(0, grid_h - hw[0])
        left = rng.integers(0, grid_w - hw[1])
        block = np.zeros((grid_h, grid_w), dtype=bool)
        block[top : top + hw[0], left : left + hw[1]] = True
        idx = np.flatnonzero(block & allowed[max(len(allowed) - 1 - tries, 0)])
        if idx.size > min_keep:
            return idx
        failures += 1
        if failures == _RELAX_AFTER:
            tries, failures = tries + 1, 0


class ReferenceMaskSampler(BlockMaskSampler):
    """Reference-compatible sampler; same construction and call as ``MultiBlockMaskSampler``
    (without ``context_policy``/``group_size``: it always cuts per micro-batch)."""

    def _validate(self, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep, overlap):
        validate_reference_settings(
            self.grid_h, self.grid_w, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep
        )

    def block_sizes(self, step: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((h, w) of the targets, (h, w) of the context) for ``step``, the reference way."""
        gen = torch.Generator()
        gen.manual_seed(self.seed + step)
        grid = (self.grid_h, self.grid_w)
        rand = torch.rand(1, generator=gen).item()
        pred = reference_block_size(rand, self.pred_mask_scale, self.aspect_ratio, *grid)
        rand = torch.rand(1, generator=gen).item()
        enc = reference_block_size(rand, self.enc_mask_scale, (1.0, 1.0), *grid)
        for name, (h, w) in (("target", pred), ("context", enc)):
            if h * w <= self.min_keep:  # unreachable after validation; never hang regardless
                raise ValueError(
                    f"mask.min_keep={self.min_keep}: step {step} drew a {h}x{w} {name} block"
                )
        return pred, enc

    def __call__(
        self, positions: Sequence[int] | np.ndarray
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """positions: [B] global sample positions of one step; only their step and count matter.

        Returns ``(masks_enc, masks_pred)``: ``nenc`` LongTensors [B, K_enc] and ``npred``
        LongTensors [B, K_pred], each list cut to the micro-batch minimum (raster prefix).
        """
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size == 0 or pos.min() < 0:
            raise ValueError("positions must be a non-empty list of non-negative sample positions")
        steps = pos // self.global_batch_size
        if (steps != steps[0]).any():
            raise ValueError(f"positions span optimizer steps {sorted(set(steps.tolist()))}")
        step = int(steps[0])
        (ph, pw), enc_hw = self.block_sizes(step)
        rng = np.random.default_rng([self.seed & ((1 << 64) - 1), step])
        batch, grid_h, grid_w = pos.size, self.grid_h, self.grid_w
        tops = rng.integers(0, grid_h - ph, size=(batch, self.npred))
        lefts = rng.integers(0, grid_w - pw, size=(batch, self.npred))
        rows = np.arange(grid_h)[:, None]
        cols = np.arange(grid_w)[None, :]
        targets = (
            (rows >= tops[..., None, None]) & (rows < tops[..., None, None] + ph)
            & (cols >= lefts[..., None, None]) & (cols < lefts[..., None, None] + pw)
        )  # fmt: skip
        pred = [[np.flatnonzero(t) for t in sample] for sample in targets]
        # allowed[b, k]: outside the first k targets of sample b (k = 0: everywhere).
        allowed = np.concatenate(
            [np.ones((batch, 1, grid_h, grid_w), dtype=bool), np.cumsum(targets, axis=1) == 0],
            axis=1,
        )
        if self.allow_overlap:
            allowed = allowed[:, :1]
        enc = [
            [_context_indices(rng, allowed[b], enc_hw, self.min_keep) for _ in range(self.nenc)]
            for b in range(batch)
        ]
        return _trim_to_shortest(enc), _trim_to_shortest(pred)


def _trim_to_shortest(masks: list[list[np.ndarray]]) -> list[torch.Tensor]:
    """Per-sample lists of index arrays [B][L] -> L LongTensors [B, K], K the shortest array of
    the whole micro-batch, each array cut to its first K (raster-order) indices."""
    keep = min(idx.size for sample in masks for idx in sample)
    return [
        torch.from_numpy(np.stack([sample[k][:keep] for sample in masks]).astype(np.int64))
        for k in range(len(masks[0]))
    ]
