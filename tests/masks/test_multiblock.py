"""Behaviour of MultiBlockMaskSampler: invariants, coverage, determinism, re-shard invariance."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ijepa_ds.masks import multiblock
from ijepa_ds.masks.geometry import reachable_block_dims
from ijepa_ds.masks.multiblock import MultiBlockMaskSampler

# (5, 130): rows of three packed 64-bit words, blocks straddling word boundaries
GRIDS = [(4, 4), (7, 7), (8, 8), (14, 14), (16, 16), (9, 14), (12, 5), (5, 130)]


def _sampler(grid, global_batch=32, seed=0, **kw) -> MultiBlockMaskSampler:
    """Reference settings; on grids too small for min_keep=10, min_keep is the smallest target."""
    if "min_keep" not in kw:
        smallest = reachable_block_dims(*grid, (0.15, 0.2), (0.75, 1.5))[0]
        kw["min_keep"] = min(10, smallest[0] * smallest[1])
    return MultiBlockMaskSampler(grid, global_batch, seed, **kw)


def _draw(sampler: MultiBlockMaskSampler, step: int):
    """Masks of a whole step as numpy: enc [G, nenc, K], pred [G, npred, K_pred]."""
    g = sampler.global_batch_size
    enc, pred = sampler(np.arange(step * g, (step + 1) * g))
    return torch.stack(enc, 1).numpy(), torch.stack(pred, 1).numpy()


def _real(masks: np.ndarray) -> np.ndarray:
    """The real (not padded) entries of masks, flattened."""
    return masks[masks >= 0]


def _check_step(sampler: MultiBlockMaskSampler, step: int) -> None:
    """Every invariant of one step's masks (vectorised over the step's samples); padding (-1)
    may only follow the real entries of a context row."""
    grid_h, grid_w = sampler.grid_h, sampler.grid_w
    (ph, pw), (eh, ew) = sampler.block_sizes(step)
    enc, pred = _draw(sampler, step)
    g = enc.shape[0]
    assert enc.dtype == np.int64 and pred.dtype == np.int64
    real = enc >= 0
    assert (real[..., :-1] >= real[..., 1:]).all() and (enc[~real] == -1).all()
    assert real.sum(-1).min() >= sampler.min_keep and pred.shape[2] == ph * pw
    assert (pred >= 0).all()
    # each target: the full ph x pw rectangle at its top-left cell, in raster order, on the grid
    top, left = (pred // grid_w).min(-1), (pred % grid_w).min(-1)
    rows = top[..., None, None] + np.arange(ph)[:, None]
    cols = left[..., None, None] + np.arange(pw)[None, :]
    np.testing.assert_array_equal(pred, (rows * grid_w + cols).reshape(pred.shape))
    assert (top + ph <= grid_h).all() and (left + pw <= grid_w).all()
    # each context: strictly increasing valid indices inside one eh x ew block
    assert (np.diff(enc, axis=-1)[real[..., 1:]] > 0).all() and enc.max() < grid_h * grid_w
    rows = np.where(real, enc // grid_w, grid_h)
    cols = np.where(real, enc % grid_w, grid_w)
    top, left = rows.min(-1), cols.min(-1)
    assert (np.where(real, rows - top[..., None], 0) < eh).all()
    assert (np.where(real, cols - left[..., None], 0) < ew).all()
    if not sampler.allow_overlap:
        covered = np.zeros((g, grid_h * grid_w), dtype=bool)
        np.put_along_axis(covered, pred.reshape(g, -1), True, axis=1)
        for j in range(enc.shape[1]):
            hit = np.take_along_axis(covered, np.maximum(enc[:, j], 0), axis=1)
            assert not (hit & real[:, j]).any()


@pytest.mark.parametrize("grid", GRIDS)
def test_invariants_hold_on_every_grid(grid):
    for seed in (0, 7):
        sampler = _sampler(grid, global_batch=24, seed=seed)
        for step in (0, 1, 1000):
            _check_step(sampler, step)


def test_invariants_with_several_context_blocks_and_overlap_allowed():
    for kw in ({"nenc": 2, "npred": 3}, {"allow_overlap": True}):
        sampler = _sampler((14, 14), **kw)
        for step in range(3):
            _check_step(sampler, step)


@pytest.mark.parametrize("grid", [(16, 16), (14, 14), (9, 14)])
def test_block_sizes_within_documented_rounding_bounds(grid):
    sampler = _sampler(grid)
    area = grid[0] * grid[1]
    reachable = set(reachable_block_dims(*grid, (0.15, 0.2), (0.75, 1.5)))
    n_lo, n_hi = math.floor(area * 0.15), math.floor(area * 0.2)
    spread = max(math.sqrt(a) + 1 / math.sqrt(a) for a in (0.75, 1.5))  # worst aspect
    a_lo = (math.sqrt(n_lo * 0.75) - 0.5) / (math.sqrt(n_lo / 0.75) + 0.5)
    a_hi = (math.sqrt(n_lo * 1.5) + 0.5) / (math.sqrt(n_lo / 1.5) - 0.5)
    enc_sides = set()
    for step in range(1500):
        (h, w), (eh, ew) = sampler.block_sizes(step)
        assert (h, w) in reachable
        if h < grid[0] and w < grid[1]:  # unclamped: the rounding bounds apply
            assert n_lo - 0.5 * math.sqrt(n_lo) * spread + 0.25 <= h * w
            assert h * w <= n_hi + 0.5 * math.sqrt(n_hi) * spread + 0.25
            assert a_lo <= h / w <= a_hi
        # context: aspect 1 (capped by the grid), area from scale 0.85..1.0 within rounding
        assert eh == min(ew, grid[0]) or ew == min(eh, grid[1])
        side = math.sqrt(area * 0.85) - 0.5
        assert min(side, grid[0]) <= eh <= grid[0] and min(side, grid[1]) <= ew <= grid[1]
        enc_sides.add((eh, ew))
    assert len(enc_sides) >= 2  # both the full grid and a smaller block occur


@pytest.mark.parametrize("grid", [(16, 16), (7, 7), (9, 14)])
def test_every_patch_reachable_as_target_and_context(grid):
    sampler = _sampler(grid, global_batch=256)
    seen_target = np.zeros(grid[0] * grid[1], dtype=bool)
    seen_context = np.zeros_like(seen_target)
    for step in range(8):
        enc, pred = _draw(sampler, step)
        seen_target[pred.reshape(-1)] = True
        seen_context[_real(enc)] = True
    assert seen_target.all() and seen_context.all()  # last row and column included


def test_context_block_position_is_random():
    sampler = _sampler((16, 16), global_batch=512)
    corners = set()
    for step in range(6):
        layout = sampler.step_layout(step)
        if layout.enc_hw == (15, 15):
            corners.update(map(tuple, layout.enc_corners[:, 0].tolist()))
    assert corners == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_target_coverage_matches_uniform_placement():
    """Corners are uniform over all placements, so a cell's expected hit rate is the product of
    row and column placement counts; cells near the border are hit less (the border effect of
    uniform corners), but each cell must match its expectation, and the map is mirror-symmetric."""
    grid_h = grid_w = 16
    sampler = _sampler((grid_h, grid_w), global_batch=2048)
    hits = np.zeros(grid_h * grid_w)
    expected = np.zeros((grid_h, grid_w))
    for step in range(16):
        _, pred = _draw(sampler, step)
        hits += np.bincount(pred.reshape(-1), minlength=grid_h * grid_w)
        (h, w), _ = sampler.block_sizes(step)
        rows = [min(r, grid_h - h) - max(r - h + 1, 0) + 1 for r in range(grid_h)]
        cols = [min(c, grid_w - w) - max(c - w + 1, 0) + 1 for c in range(grid_w)]
        place = np.outer(rows, cols) / ((grid_h - h + 1) * (grid_w - w + 1))
        expected += place * sampler.global_batch_size * sampler.npred
    ratio = hits.reshape(grid_h, grid_w) / expected
    assert 0.85 < ratio.min() and ratio.max() < 1.15
    hits = hits.reshape(grid_h, grid_w)
    for mirrored in (hits[::-1], hits[:, ::-1]):
        assert np.abs(hits / mirrored - 1).max() < 0.2


def test_context_coverage_is_mirror_symmetric_and_subsampling_unbiased():
    grid = (16, 16)
    sampler = _sampler(grid, global_batch=2048)
    hits = np.zeros(256)
    dropped_top = dropped_bottom = kept_top = kept_bottom = 0
    for step in range(4):
        enc, _ = _draw(sampler, step)
        hits += np.bincount(_real(enc), minlength=256)
        layout = sampler.step_layout(step)
        for b in range(512):  # full context rebuilt here, independently of the sampler
            full = np.zeros(grid, dtype=bool)
            (t, lft), (eh, ew) = layout.enc_corners[b, 0], layout.enc_hw
            full[t : t + eh, lft : lft + ew] = True
            for t, lft in layout.pred_corners[b]:
                full[t : t + layout.pred_hw[0], lft : lft + layout.pred_hw[1]] = False
            full_idx = np.flatnonzero(full)
            kept = np.isin(full_idx, enc[b, 0])
            assert kept.sum() == (enc[b, 0] >= 0).sum()  # a subset of the full context
            top = full_idx < 128
            dropped_top += (~kept & top).sum()
            dropped_bottom += (~kept & ~top).sum()
            kept_top += (kept & top).sum()
            kept_bottom += (kept & ~top).sum()
    # A raster-order prefix would drop only bottom rows; uniform subsampling drops both halves
    # at the same rate.
    rate_top = dropped_top / (dropped_top + kept_top)
    rate_bottom = dropped_bottom / (dropped_bottom + kept_bottom)
    assert abs(rate_top / rate_bottom - 1) < 0.1
    hits = hits.reshape(grid)
    assert hits.min() > 0
    for mirrored in (hits[::-1], hits[:, ::-1]):
        assert np.abs(hits / mirrored - 1).max() < 0.2


def test_masks_are_a_function_of_seed_and_position():
    a, b, c = (_sampler((14, 14), global_batch=16, seed=s) for s in (3, 3, 4))
    pos = [37, 33, 40]
    for x, y in zip(sum(a(pos), []), sum(b(pos), []), strict=True):
        assert torch.equal(x, y)
    assert any(not torch.equal(x, y) for x, y in zip(sum(a(pos), []), sum(c(pos), []), strict=True))


def test_different_positions_and_ranks_draw_different_masks():
    sampler = _sampler((16, 16), global_batch=128)
    rank0 = sampler(np.arange(0, 64))[1]
    rank1 = sampler(np.arange(64, 128))[1]
    same = [(x == y).all(dim=1) for x, y in zip(rank0, rank1, strict=True)]
    assert torch.stack(same).float().mean() < 0.1
    blocks = torch.stack(rank0, 1)[:, :, 0]  # first patch of each block identifies its corner
    assert len({tuple(row.tolist()) for row in blocks}) == 64  # no two samples alike


def test_same_masks_whatever_the_micro_batch_split():
    global_batch, step = 64, 5
    pos = np.arange(step * global_batch, (step + 1) * global_batch)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(pos)
    splits = [
        [pos],
        np.split(pos, 2),
        np.split(pos, 4),
        np.split(shuffled, [3, 20, 21, 50]),  # uneven, non-contiguous micro-batches
    ]
    results = []
    for parts in splits:
        sampler = _sampler((16, 16), global_batch=global_batch)  # fresh: no cached step
        per_pos = {}
        for part in parts:
            enc, pred = sampler(part)
            for i, p in enumerate(part.tolist()):
                per_pos[p] = [m[i] for m in enc + pred]
        results.append(per_pos)
    for other in results[1:]:
        for p in pos.tolist():
            assert all(torch.equal(x, y) for x, y in zip(results[0][p], other[p], strict=True))


def test_bounded_time_on_tiny_grids():
    start = time.perf_counter()
    for grid in ((4, 4), (7, 7)):
        sampler = _sampler(grid, global_batch=64)
        for step in range(200):
            sampler(np.arange(step * 64, step * 64 + 16))
    assert time.perf_counter() - start < 5.0


def _crowded_sampler() -> MultiBlockMaskSampler:
    """8 targets of 2x2 on a 4x4 grid: the context often keeps < 4 patches, forcing retries."""
    return MultiBlockMaskSampler(
        (4, 4), 2048, 0, enc_mask_scale=(1.0, 1.0), pred_mask_scale=(0.25, 0.25),
        aspect_ratio=(1.0, 1.0), npred=8, min_keep=4,
    )  # fmt: skip


def test_retries_and_fallback_keep_the_invariants():
    sampler = _crowded_sampler()
    fallbacks = 0
    for step in range(3):
        fallbacks += sampler.step_layout(step).num_fallback
        _check_step(sampler, step)
    assert fallbacks > 0


def test_fallback_stacks_targets_when_retries_run_out(monkeypatch):
    monkeypatch.setattr(multiblock, "MAX_ATTEMPTS", 1)
    sampler = _crowded_sampler()
    layout = sampler.step_layout(0)
    assert layout.num_fallback > 100
    enc, pred = _draw(sampler, 0)
    stacked = (pred == pred[:, :1]).all(axis=(1, 2))
    assert stacked.sum() >= layout.num_fallback
    _check_step(sampler, 0)


def test_positions_must_share_one_step():
    sampler = _sampler((14, 14), global_batch=8)
    with pytest.raises(ValueError, match="span optimizer steps"):
        sampler([7, 8])
    with pytest.raises(ValueError, match="non-negative"):
        sampler([-1])


@settings(max_examples=40, deadline=None)
@given(
    grid=st.tuples(st.integers(3, 20), st.integers(3, 20)),
    pred_lo=st.floats(0.02, 0.4),
    pred_width=st.floats(0.0, 0.2),
    enc_lo=st.floats(0.4, 1.0),
    aspect=st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 3.0)),
    counts=st.tuples(st.integers(1, 2), st.integers(1, 6)),
    min_keep=st.integers(1, 12),
    allow_overlap=st.booleans(),
    seed=st.integers(0, 2**63),
)
def test_any_accepted_setting_samples_valid_masks(
    grid, pred_lo, pred_width, enc_lo, aspect, counts, min_keep, allow_overlap, seed
):
    """Settings are either rejected with ValueError or always give masks with every invariant."""
    kw = dict(
        enc_mask_scale=(enc_lo, 1.0), pred_mask_scale=(pred_lo, min(pred_lo + pred_width, 1.0)),
        aspect_ratio=aspect, nenc=counts[0], npred=counts[1], min_keep=min_keep,
        allow_overlap=allow_overlap,
    )  # fmt: skip
    try:
        sampler = MultiBlockMaskSampler(grid, 16, seed, **kw)
    except ValueError as err:
        assert "mask." in str(err)
        return
    for step in (0, 1, 2):
        _check_step(sampler, step)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
