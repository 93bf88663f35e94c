"""I-JEPA multi-block masks as a pure function of (seed, global sample position).

A global sample position ``p`` counts samples over the whole run; its optimizer step is
``p // global_batch_size``. Per step, shared by all its samples (as the reference shares sizes
per batch): the target block size and the context block size, drawn from (seed, step). Per
sample: every block position, drawn from (seed, p). Uniforms come from a counter-based hash
(splitmix64), so no generator state exists to drift between DataLoader workers, ranks or resumes.

Sampling of one sample, with ``allow_overlap=False``: place ``npred`` target blocks and ``nenc``
context blocks uniformly (last row/column included); context = block minus every target patch.
If a context keeps fewer than ``min_keep`` patches, redraw all of the sample's positions, at most
``MAX_ATTEMPTS`` times; after that, the deterministic fallback stacks every target on the first
target's position of the last attempt. ``validate_mask_settings`` guarantees that the smallest
context block minus the largest target block keeps ``min_keep`` patches, so the fallback always
satisfies the invariants and sampling time is bounded.

Lengths (``context_policy``): target blocks hold exactly h*w patches, so target lists need no
cut under any policy. Context lists are cut by keeping a uniformly random subset (per-patch
hashed priorities) listed in raster order, to a length that depends only on the step's layout:

- ``global_min``: ``K_enc``, the minimum context size over every sample of the STEP (all
  ``global_batch_size`` positions, not just the micro-batch); one length for the whole step.
- ``group_min``: the minimum within the sample's group of ``group_size`` consecutive positions
  of the step (a group larger than the step is the step). A micro-batch spanning several groups
  gets their lengths padded to its longest.
- ``keep_all``: no cut; every sample keeps its whole context, padded to the micro-batch's
  longest.

Padded entries are ``-1`` after the real, raster-ordered indices; the models derive their
key-padding mask from ``mask >= 0``. A step's masks (real indices) are the same however it is
split over ranks and micro-batches. One length serves all ``nenc`` lists of a micro-batch so
that they can be concatenated along the batch, as the reference's ``apply_masks`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ijepa_ds.masks.base import BlockMaskSampler
from ijepa_ds.masks.geometry import (
    block_corner,
    block_count,
    block_dims,
    check_group_size,
    validate_mask_settings,
)

MAX_ATTEMPTS = 20  # tries per sample before the fallback; the reference's timeout is also 20

PAD_INDEX = -1  # mask entry of a padded token (see models.tokens.apply_masks)

_MASK64 = (1 << 64) - 1
_STREAM_SIZE, _STREAM_POSITION, _STREAM_SUBSAMPLE = 0x5A17, 0x9051, 0x5AB5


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of uint64 ``x`` (wrapping arithmetic), same shape."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniform(seed: int, stream: int, key: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) that depend only on (seed, stream, key, index).

    key, index: non-negative integer arrays that broadcast together; the result has their
    broadcast shape. The key is hashed before broadcasting against index, so the expensive part
    runs once per key.
    """
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([(seed & _MASK64) ^ stream], dtype=np.uint64))
        k = _splitmix64(base ^ np.asarray(key, dtype=np.int64).astype(np.uint64))
        h = _splitmix64(k ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# _ONES[m] has the m lowest bits set, m = 0..64 (1 << 64 overflows, hence the table).
_ONES = np.array([(1 << m) - 1 for m in range(65)], dtype=np.uint64)
_BIT = np.arange(64, dtype=np.uint64)


def block_rows(corners: np.ndarray, hw: tuple[int, int], grid_h: int, grid_w: int) -> np.ndarray:
    """Blocks as packed patch rows: corners [..., 2] (top, left) -> uint64 [..., H, ceil(W/64)],
    bit b of word q of row i set when patch (i, 64 q + b) is in the block. Packing keeps the
    whole-step work of a 2048-sample step small (a bool grid per sample is 8x more data)."""
    words = np.arange(-(-grid_w // 64)) * 64
    left = corners[..., 1, None]
    lo = np.clip(left - words, 0, 64)
    hi = np.clip(left + hw[1] - words, 0, 64)
    col_bits = _ONES[hi] & ~_ONES[lo]  # [..., words]
    rows = np.arange(grid_h)
    top = corners[..., 0, None]
    in_rows = (rows >= top) & (rows < top + hw[0])  # [..., H]
    return np.where(in_rows[..., None], col_bits[..., None, :], np.uint64(0))


def unpack_rows(packed: np.ndarray, grid_w: int) -> np.ndarray:
    """uint64 [..., H, words] -> bool [..., H, W]."""
    bits = (packed[..., None] >> _BIT) & np.uint64(1)
    return bits.reshape(*packed.shape[:-1], -1)[..., :grid_w].astype(bool)


@dataclass(frozen=True)
class StepLayout:
    """Block geometry of every sample of one optimizer step (G = global batch size)."""

    step: int
    pred_hw: tuple[int, int]  # target block (height, width), shared by the step
    enc_hw: tuple[int, int]  # context block (height, width), shared by the step
    pred_corners: np.ndarray  # [G, npred, 2] (top, left)
    enc_corners: np.ndarray  # [G, nenc, 2] (top, left)
    keep_enc: int  # K_enc: smallest context size over the step (and over the nenc lists)
    counts: np.ndarray  # [G, nenc] context size of every sample and list before any cut
    num_fallback: int  # samples that needed the fallback placement


class MultiBlockMaskSampler(BlockMaskSampler):
    """Context/target masks for micro-batches of global sample positions (see module doc).

    Construction as ``BlockMaskSampler`` (grid, global batch, seed, block settings), plus
    ``context_policy`` and ``group_size`` (``mask.context_policy``, ``mask.group_size``).
    """

    def __init__(self, *args, context_policy: str = "group_min", group_size: int = 128, **kw):
        super().__init__(*args, **kw)
        self.context_policy = context_policy
        self.group_size = check_group_size(context_policy, group_size, self.global_batch_size)
        # Last step's layout: a pure function of the step, so caching it cannot drift; it saves
        # recomputing the whole step for the next micro-batch of the same step.
        self._cached: StepLayout | None = None

    def _validate(self, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep, overlap):
        validate_mask_settings(
            self.grid_h, self.grid_w, enc_scale, pred_scale, aspect_ratio,
            nenc, npred, min_keep, overlap,
        )  # fmt: skip

    def block_sizes(self, step: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((h, w) of the target blocks, (h, w) of the context block) for optimizer ``step``."""
        u = keyed_uniform(self.seed, _STREAM_SIZE, np.array([step]), np.arange(3))
        lo, hi = self.aspect_ratio
        ph, pw = block_dims(
            block_count(u[0], self.pred_mask_scale, self.grid_h, self.grid_w),
            lo + u[1] * (hi - lo), self.grid_h, self.grid_w,
        )  # fmt: skip
        n_enc = block_count(u[2], self.enc_mask_scale, self.grid_h, self.grid_w)
        eh, ew = block_dims(n_enc, 1.0, self.grid_h, self.grid_w)
        return (int(ph), int(pw)), (int(eh), int(ew))

    def context_rows(self, pred_corners, enc_corners, pred_hw, enc_hw) -> np.ndarray:
        """Context patches per sample and context block, packed as in ``block_rows``:
        uint64 [n, nenc, H, words], from pred_corners [n, npred, 2] and enc_corners [n, nenc, 2]."""
        context = block_rows(enc_corners, enc_hw, self.grid_h, self.grid_w)
        if not self.allow_overlap:
            targets = block_rows(pred_corners, pred_hw, self.grid_h, self.grid_w)
            context &= ~np.bitwise_or.reduce(targets, axis=1)[:, None]
        return context

    def _draw_corners(self, positions: np.ndarray, attempt: int, pred_hw, enc_hw):
        """Corners for one attempt: ([n, npred, 2], [n, nenc, 2]) for positions [n]."""
        blocks = self.npred + self.nenc
        draw = attempt * 2 * blocks + np.arange(2 * blocks)
        u = keyed_uniform(self.seed, _STREAM_POSITION, positions[:, None], draw[None, :])
        u = u.reshape(len(positions), blocks, 2)
        sides = np.array([pred_hw] * self.npred + [enc_hw] * self.nenc)  # [blocks, 2]
        corners = np.stack(
            [block_corner(u[..., 0], self.grid_h, sides[:, 0]),
             block_corner(u[..., 1], self.grid_w, sides[:, 1])],
            axis=-1,
        )  # fmt: skip
        return corners[:, : self.npred], corners[:, self.npred :]

    def step_layout(self, step: int) -> StepLayout:
        """Geometry of all samples of ``step`` with bounded retries and the fallback."""
        if self._cached is not None and self._cached.step == step:
            return self._cached
        g = self.global_batch_size
        pred_hw, enc_hw = self.block_sizes(step)
        pred = np.zeros((g, self.npred, 2), dtype=np.int64)
        enc = np.zeros((g, self.nenc, 2), dtype=np.int64)
        counts = np.zeros((g, self.nenc), dtype=np.int64)
        pending = np.arange(g)
        for attempt in range(MAX_ATTEMPTS):
            pred[pending], enc[pending] = self._draw_corners(
                step * g + pending, attempt, pred_hw, enc_hw
            )
            rows = self.context_rows(pred[pending], enc[pending], pred_hw, enc_hw)
            counts[pending] = np.bitwise_count(rows).sum(axis=(-2, -1))
            pending = pending[counts[pending].min(axis=1) < self.min_keep]
            if pending.size == 0:
                break
        if pending.size:
            pred[pending] = pred[pending, :1]
            rows = self.context_rows(pred[pending], enc[pending], pred_hw, enc_hw)
            counts[pending] = np.bitwise_count(rows).sum(axis=(-2, -1))
            if counts[pending].min() < self.min_keep:
                raise RuntimeError("mask fallback broke min_keep: validate_mask_settings is wrong")
        layout = StepLayout(
            step, pred_hw, enc_hw, pred, enc, int(counts.min()), counts, int(pending.size)
        )
        self._cached = layout
        return layout

    def step_of(self, positions: Sequence[int] | np.ndarray) -> tuple[np.ndarray, int]:
        """Positions as int64 [B] and their common optimizer step; ValueError if they span two."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size == 0 or pos.min() < 0:
            raise ValueError("positions must be a non-empty list of non-negative sample positions")
        steps = pos // self.global_batch_size
        if (steps != steps[0]).any():
            raise ValueError(
                f"positions span optimizer steps {sorted(set(steps.tolist()))} with "
                f"global_batch_size={self.global_batch_size}; a micro-batch lies in one step"
            )
        return pos, int(steps[0])

    def __call__(
        self, positions: Sequence[int] | np.ndarray
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """positions: [B] global sample positions (all from one step).

        Returns ``(masks_enc, masks_pred)``: ``nenc`` LongTensors [B, K] and ``npred``
        LongTensors [B, h*w] of patch indices ``i * W + j`` in raster order. K is K_enc under
        ``global_min``; under the other policies it is the micro-batch's longest kept context,
        shorter rows padded with ``PAD_INDEX`` at the end.
        """
        pos, step = self.step_of(positions)
        layout = self.step_layout(step)
        local = pos - step * self.global_batch_size
        rows = self.context_rows(
            layout.pred_corners[local], layout.enc_corners[local], layout.pred_hw, layout.enc_hw
        )
        grids = unpack_rows(rows, self.grid_w).reshape(len(pos), self.nenc, -1)
        enc = self._subsample(grids, pos, self.keep_lengths(layout, local))
        pred = self._target_indices(layout.pred_corners[local], layout.pred_hw)
        masks_enc = [torch.from_numpy(np.ascontiguousarray(enc[:, j])) for j in range(self.nenc)]
        masks_pred = [torch.from_numpy(np.ascontiguousarray(pred[:, i])) for i in range(self.npred)]
        return masks_enc, masks_pred

    def keep_lengths(self, layout: StepLayout, local: np.ndarray) -> np.ndarray:
        """Context patches kept per sample and list, int64 [B, nenc], for step-local sample
        indices ``local`` [B], under ``context_policy``."""
        counts = layout.counts[local]
        if self.context_policy == "keep_all":
            return counts.copy()
        if self.context_policy == "global_min":
            return np.full_like(counts, layout.keep_enc)
        groups = layout.counts.reshape(-1, self.group_size * self.nenc).min(axis=1)
        return np.broadcast_to(groups[local // self.group_size, None], counts.shape).copy()

    def _subsample(self, context: np.ndarray, pos: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Uniformly random ``keep[b, j]`` of the True cells of context [B, nenc, N], as
        raster-ordered indices [B, nenc, keep.max()], padded with ``PAD_INDEX``. Priorities hash
        (seed, position, list, cell), so a sample keeps the same patches whichever micro-batch
        it is in, and a shorter keep is a subset of a longer one."""
        cells = context.shape[-1]
        index = np.arange(self.nenc)[:, None] * cells + np.arange(cells)[None, :]
        priority = keyed_uniform(self.seed, _STREAM_SUBSAMPLE, pos[:, None, None], index[None])
        priority[~context] = 2.0  # above every uniform: never picked before a context cell
        longest = int(keep.max())
        if (keep == longest).all():  # one length: no padding (the global_min path)
            if longest < cells:
                chosen = np.argpartition(priority, longest - 1, axis=-1)[..., :longest]
            else:
                chosen = np.broadcast_to(np.arange(cells), priority.shape).copy()
            chosen.sort(axis=-1)
            return chosen
        ranked = np.argsort(priority, axis=-1, kind="stable")[..., :longest]
        ranked[np.arange(longest) >= keep[..., None]] = cells  # sorts after every real index
        ranked.sort(axis=-1)
        ranked[ranked == cells] = PAD_INDEX
        return ranked

    def _target_indices(self, corners: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """Raster-ordered patch indices of the target blocks: corners [B, npred, 2] ->
        [B, npred, h*w]."""
        rows = corners[..., 0, None, None] + np.arange(hw[0])[:, None]
        cols = corners[..., 1, None, None] + np.arange(hw[1])[None, :]
        return (rows * self.grid_w + cols).reshape(*corners.shape[:-1], hw[0] * hw[1])
