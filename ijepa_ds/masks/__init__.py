"""I-JEPA multi-block masking: samplers, the DataLoader collator and TensorBoard overlays.

``build_mask_sampler("ijepa_ds", ...)`` gives the fixed sampler (``MultiBlockMaskSampler``);
``build_mask_sampler("reference", ...)`` the reference-compatible one, for ablations.
"""

from __future__ import annotations

from ijepa_ds.masks.collator import MaskCollator
from ijepa_ds.masks.geometry import validate_mask_settings
from ijepa_ds.masks.multiblock import MultiBlockMaskSampler
from ijepa_ds.masks.overlay import render_mask_grid, render_mask_overlay, save_png
from ijepa_ds.masks.reference import ReferenceMaskSampler

MASK_COMPAT = {"ijepa_ds": MultiBlockMaskSampler, "reference": ReferenceMaskSampler}


def build_mask_sampler(compat: str, **kwargs) -> MultiBlockMaskSampler | ReferenceMaskSampler:
    """Sampler for ``mask.compat`` (``"ijepa_ds"`` or ``"reference"``); ``kwargs`` go to its
    constructor (grid_size, global_batch_size, seed, scales, counts, min_keep, allow_overlap)."""
    if compat not in MASK_COMPAT:
        raise ValueError(f"mask.compat={compat!r} must be one of {sorted(MASK_COMPAT)}")
    return MASK_COMPAT[compat](**kwargs)


__all__ = [
    "MASK_COMPAT",
    "MaskCollator",
    "MultiBlockMaskSampler",
    "ReferenceMaskSampler",
    "build_mask_sampler",
    "render_mask_grid",
    "render_mask_overlay",
    "save_png",
    "validate_mask_settings",
]
