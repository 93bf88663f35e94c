"""mask.context_policy of MultiBlockMaskSampler: global_min, group_min, keep_all."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ijepa_ds.masks.geometry import check_group_size
from ijepa_ds.masks.multiblock import MultiBlockMaskSampler

GRID, GLOBAL = (16, 16), 64


def _sampler(policy: str, group_size: int = 16, global_batch: int = GLOBAL, **kw):
    return MultiBlockMaskSampler(
        GRID, global_batch, 3, context_policy=policy, group_size=group_size, **kw
    )


def _full_contexts(sampler: MultiBlockMaskSampler, step: int) -> list[list[np.ndarray]]:
    """Every sample's whole context per list (block minus targets), rebuilt from the layout
    independently of the sampler's packed-bit code: [G][nenc] raster-ordered index arrays."""
    layout = sampler.step_layout(step)
    (ph, pw), (eh, ew) = layout.pred_hw, layout.enc_hw
    out = []
    for b in range(sampler.global_batch_size):
        lists = []
        for top, left in layout.enc_corners[b]:
            full = np.zeros(GRID, dtype=bool)
            full[top : top + eh, left : left + ew] = True
            for t, lft in layout.pred_corners[b]:
                full[t : t + ph, lft : lft + pw] = False
            lists.append(np.flatnonzero(full))
        out.append(lists)
    return out


def _rows(sampler, positions) -> dict[int, list[np.ndarray]]:
    """Real context indices per position and list, from one call on ``positions``."""
    enc, _ = sampler(np.asarray(positions))
    return {
        int(p): [m[i][m[i] >= 0].numpy() for m in enc] for i, p in enumerate(np.asarray(positions))
    }


def test_global_min_cuts_every_context_to_the_step_minimum():
    sampler = _sampler("global_min")
    full = _full_contexts(sampler, 1)
    enc, _ = sampler(np.arange(GLOBAL, 2 * GLOBAL))
    keep = min(len(idx) for lists in full for idx in lists)
    assert all(m.shape == (GLOBAL, keep) and (m >= 0).all() for m in enc)


def test_group_min_cuts_to_each_groups_minimum_and_pads_the_micro_batch():
    sampler = _sampler("group_min", group_size=16, nenc=2, npred=3)
    full = _full_contexts(sampler, 2)
    positions = np.arange(2 * GLOBAL + 8, 2 * GLOBAL + 40)  # spans groups 0, 1 and 2
    rows = _rows(sampler, positions)
    lengths = []
    for p in positions.tolist():
        local = p - 2 * GLOBAL
        group = range(local // 16 * 16, local // 16 * 16 + 16)
        expected = min(len(full[g][j]) for g in group for j in range(2))
        for j in range(2):
            assert len(rows[p][j]) == expected
            assert np.isin(rows[p][j], full[local][j]).all()
        lengths.append(expected)
    assert len(set(lengths)) > 1  # the micro-batch really mixes lengths (padding exercised)
    enc, _ = sampler(positions)
    assert enc[0].shape[1] == max(lengths)


def test_keep_all_keeps_every_context_patch():
    sampler = _sampler("keep_all", nenc=2)
    full = _full_contexts(sampler, 0)
    rows = _rows(sampler, np.arange(GLOBAL))
    for p in range(GLOBAL):
        for j in range(2):
            np.testing.assert_array_equal(rows[p][j], full[p][j])


def test_shorter_policies_keep_subsets_of_longer_ones():
    """Hashed priorities: the group_min choice is a subset of keep_all's, global_min's of
    group_min's, so a policy changes how many patches survive, never which are preferred."""
    pos = np.arange(GLOBAL)
    kept = {policy: _rows(_sampler(policy), pos) for policy in ("global_min", "group_min")}
    kept["keep_all"] = _rows(_sampler("keep_all"), pos)
    for p in pos.tolist():
        assert np.isin(kept["global_min"][p][0], kept["group_min"][p][0]).all()
        assert np.isin(kept["group_min"][p][0], kept["keep_all"][p][0]).all()


@pytest.mark.parametrize("policy", ["global_min", "group_min", "keep_all"])
def test_masks_do_not_depend_on_the_split(policy):
    whole = _rows(_sampler(policy), np.arange(GLOBAL))
    for parts in (np.split(np.arange(GLOBAL), 4), np.split(np.arange(GLOBAL), [5, 6, 40])):
        sampler = _sampler(policy)
        for part in parts:
            for p, lists in _rows(sampler, part).items():
                assert all(np.array_equal(x, y) for x, y in zip(lists, whole[p], strict=True))


def test_group_as_large_as_the_step_is_global_min():
    a, b = _sampler("global_min"), _sampler("group_min", group_size=1024)
    for x, y in zip(sum(a(np.arange(16)), []), sum(b(np.arange(16)), []), strict=True):
        assert torch.equal(x, y)


def test_group_size_rules():
    assert check_group_size("group_min", 128, 64) == 64
    assert check_group_size("keep_all", 48, 64) == 48  # unused by other policies
    with pytest.raises(ValueError, match=r"mask.group_size=48 must divide .*global_batch_size=64"):
        check_group_size("group_min", 48, 64)
    with pytest.raises(ValueError, match=r"mask.group_size=0"):
        check_group_size("group_min", 0, 64)
    with pytest.raises(ValueError, match=r"mask.context_policy='min'"):
        check_group_size("min", 16, 64)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
