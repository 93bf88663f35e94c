"""Up-front rejection of mask settings the samplers cannot satisfy, and the sampler factory."""

from __future__ import annotations

import pytest

from ijepa_ds.masks import (
    MultiBlockMaskSampler,
    ReferenceMaskSampler,
    build_mask_sampler,
    validate_mask_settings,
)

DEFAULTS = dict(
    enc_scale=(0.85, 1.0), pred_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5),
    nenc=1, npred=4, min_keep=10, allow_overlap=False,
)  # fmt: skip


def _validate(grid=(16, 16), **changes):
    validate_mask_settings(*grid, **{**DEFAULTS, **changes})


@pytest.mark.parametrize("grid", [(16, 16), (14, 14), (12, 12), (32, 32), (10, 13)])
def test_reference_recipe_is_accepted_on_usual_grids(grid):
    _validate(grid)


@pytest.mark.parametrize(
    "grid, changes, field",
    [
        # The reference loops forever here: targets of ~7 patches can never exceed min_keep=10.
        ((7, 7), {}, r"mask\.min_keep=10 .*2x3 = 6 patches"),
        ((4, 4), {}, r"mask\.min_keep"),
        ((16, 16), {"min_keep": 36}, r"mask\.min_keep=36"),
        ((16, 16), {"min_keep": 0}, r"mask\.min_keep=0 must be an integer >= 1"),
        ((16, 16), {"pred_scale": (0.0, 0.2)}, r"mask\.pred_mask_scale=\(0\.0, 0\.2\) violates"),
        ((16, 16), {"pred_scale": (0.3, 0.2)}, r"mask\.pred_mask_scale.*min <= max"),
        ((16, 16), {"pred_scale": (0.1, 1.5)}, r"mask\.pred_mask_scale.*<= 1\.0"),
        ((16, 16), {"pred_scale": (0.1,)}, r"mask\.pred_mask_scale.*pair"),
        ((16, 16), {"enc_scale": (0.9, 1.1)}, r"mask\.enc_mask_scale"),
        ((16, 16), {"aspect_ratio": (0.0, 1.5)}, r"mask\.aspect_ratio"),
        ((16, 16), {"aspect_ratio": (-1.0, 1.5)}, r"mask\.aspect_ratio"),
        ((16, 16), {"aspect_ratio": (2.0, 1.0)}, r"mask\.aspect_ratio"),
        ((16, 16), {"nenc": 0}, r"mask\.num_enc_masks"),
        ((16, 16), {"npred": 0}, r"mask\.num_pred_masks"),
        ((16, 16), {"npred": 1.5}, r"mask\.num_pred_masks"),
        # context block of 7x7 cannot keep 10 patches once a 9x6 target is cut out of it
        ((16, 16), {"enc_scale": (0.2, 0.2)}, r"mask\.enc_mask_scale=\(0\.2, 0\.2\) is too small"),
        ((16, 16), {"enc_scale": (0.01, 0.01), "allow_overlap": True}, r"mask\.enc_mask_scale"),
        ((0, 16), {}, r"grid_size"),
    ],
)
def test_unsatisfiable_settings_are_rejected_naming_the_field(grid, changes, field):
    with pytest.raises(ValueError, match=field):
        _validate(grid, **changes)


def test_overlap_allowed_needs_no_room_for_targets_in_the_context():
    _validate(enc_scale=(0.2, 0.2), allow_overlap=True)


@pytest.mark.parametrize("kind", ["step_seeded", "reference"])
def test_samplers_validate_at_construction(kind):
    with pytest.raises(ValueError, match=r"mask\.min_keep"):
        build_mask_sampler(kind, grid_size=(7, 7), global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match="global_batch_size"):
        build_mask_sampler(kind, grid_size=(16, 16), global_batch_size=0, seed=0)


def test_factory_picks_the_sampler_and_rejects_unknown_kind():
    kw = dict(grid_size=(14, 14), global_batch_size=8, seed=1, npred=3)
    assert isinstance(build_mask_sampler("step_seeded", **kw), MultiBlockMaskSampler)
    sampler = build_mask_sampler("reference", **kw)
    assert isinstance(sampler, ReferenceMaskSampler) and sampler.npred == 3
    with pytest.raises(ValueError, match=r"mask\.sampler='official'"):
        build_mask_sampler("official", **kw)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
