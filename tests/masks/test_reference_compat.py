"""The reference-compatible sampler keeps the published sampler's behaviour (defects included)
while refusing the settings on which the published one hangs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ijepa_ds.masks import MultiBlockMaskSampler, ReferenceMaskSampler
from ijepa_ds.masks.reference import reference_block_size


def _masks(sampler: ReferenceMaskSampler, positions):
    enc, pred = sampler(positions)
    return torch.stack(enc, 1).numpy(), torch.stack(pred, 1).numpy()


def test_size_rule_shares_one_draw_and_caps_sides_below_the_grid():
    # rand 0.5: n = int(256 * 0.175) = 44, aspect 1.125 -> h = round(7.04), w = round(6.25)
    assert reference_block_size(0.5, (0.15, 0.2), (0.75, 1.5), 16, 16) == (7, 6)
    # rand 0.0: n = 38, aspect 0.75 -> h = round(5.34), w = round(7.12)
    assert reference_block_size(0.0, (0.15, 0.2), (0.75, 1.5), 16, 16) == (5, 7)
    # the context can never be the full grid: 16 is capped to 15, and 14 to 13 at 224/16
    for rand in (0.0, 0.5, 0.999):
        assert reference_block_size(rand, (0.85, 1.0), (1.0, 1.0), 16, 16) == (15, 15)
        assert reference_block_size(rand, (0.85, 1.0), (1.0, 1.0), 14, 14) == (13, 13)


def test_block_sizes_come_from_a_generator_seeded_with_seed_plus_step():
    sampler = ReferenceMaskSampler((16, 16), 64, seed=5)
    for step in (0, 3, 11):
        gen = torch.Generator()
        gen.manual_seed(5 + step)
        rand_pred, rand_enc = (torch.rand(1, generator=gen).item() for _ in range(2))
        expected_pred = reference_block_size(rand_pred, (0.15, 0.2), (0.75, 1.5), 16, 16)
        expected_enc = reference_block_size(rand_enc, (0.85, 1.0), (1.0, 1.0), 16, 16)
        assert sampler.block_sizes(step) == (expected_pred, expected_enc)


@pytest.mark.parametrize("grid", [(16, 16), (14, 14), (12, 9)])
def test_blocks_never_touch_the_last_row_or_column(grid):
    grid_h, grid_w = grid
    sampler = ReferenceMaskSampler(grid, 64, seed=0, min_keep=4)
    for step in range(20):
        enc, pred = _masks(sampler, np.arange(step * 64, step * 64 + 64))
        for idx in (enc, pred):
            assert (idx // grid_w).max() <= grid_h - 2 and (idx % grid_w).max() <= grid_w - 2


def test_context_is_the_top_left_block_cut_to_the_batch_raster_prefix():
    """Oracle rebuilt from the targets: at 224/14 the context block is always the top-left
    15x15; each sample's context is that block minus its targets, cut to the shortest context
    of the micro-batch by keeping the first indices in raster order."""
    sampler = ReferenceMaskSampler((16, 16), 32, seed=0)
    for step in range(5):
        enc, pred = _masks(sampler, np.arange(step * 32, step * 32 + 32))
        _, (eh, ew) = sampler.block_sizes(step)
        assert (eh, ew) == (15, 15)
        full = []
        for sample in pred:
            grid = np.zeros((16, 16), dtype=bool)
            grid[:eh, :ew] = True
            grid.reshape(-1)[sample.reshape(-1)] = False
            full.append(np.flatnonzero(grid))
        keep = min(len(f) for f in full)
        assert enc.shape == (32, 1, keep)
        for b, f in enumerate(full):
            np.testing.assert_array_equal(enc[b, 0], f[:keep])


def test_all_ranks_of_a_step_draw_the_same_masks():
    sampler = ReferenceMaskSampler((14, 14), 256, seed=0)
    step = 3
    ranks = [_masks(sampler, step * 256 + r * 64 + np.arange(64)) for r in range(4)]
    for enc, pred in ranks[1:]:
        np.testing.assert_array_equal(enc, ranks[0][0])
        np.testing.assert_array_equal(pred, ranks[0][1])
    other_step = _masks(sampler, (step + 1) * 256 + np.arange(64))[1]
    assert not np.array_equal(other_step, ranks[0][1])
    fixed = MultiBlockMaskSampler((14, 14), 256, seed=0)  # the fixed sampler differs per rank
    rank0, rank1 = (fixed(step * 256 + r * 64 + np.arange(64))[1][0] for r in (0, 1))
    assert not torch.equal(rank0, rank1)


def test_min_keep_is_strict_as_in_the_reference():
    # 5x5 targets hold exactly 25 patches: enough for min_keep=25 in the fixed sampler, while
    # the reference needs MORE than min_keep and would loop forever.
    kw = dict(pred_mask_scale=(0.1, 0.1), aspect_ratio=(1.0, 1.0), npred=1, min_keep=25)
    MultiBlockMaskSampler((16, 16), 8, 0, **kw)
    with pytest.raises(ValueError, match=r"mask\.min_keep=25.*MORE than min_keep"):
        ReferenceMaskSampler((16, 16), 8, 0, **kw)


def test_context_relaxation_terminates_and_may_overlap_targets():
    """Four 3x3 targets can cover the whole 4x4 context block; after 20 failed draws the
    reference stops excluding the last target, then the next, so the loop ends but contexts
    overlap targets."""
    sampler = ReferenceMaskSampler(
        (5, 5), 64, 0, enc_mask_scale=(1.0, 1.0), pred_mask_scale=(0.3, 0.3),
        aspect_ratio=(1.0, 1.0), min_keep=1,
    )  # fmt: skip
    overlapping = 0
    for step in range(4):
        enc, pred = _masks(sampler, np.arange(step * 64, step * 64 + 64))
        assert enc.shape[2] > 1
        overlapping += sum(bool(np.isin(e, p).any()) for e, p in zip(enc, pred, strict=True))
    assert overlapping > 0


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
