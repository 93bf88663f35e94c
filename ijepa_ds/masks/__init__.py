"""I-JEPA multi-block masking: samplers, the DataLoader collator and TensorBoard overlays.

``build_mask_sampler("step_seeded", ...)`` gives the fixed sampler (``MultiBlockMaskSampler``);
``build_mask_sampler("reference", ...)`` the reference-compatible one, for ablations.
"""

from __future__ import annotations

from ijepa_ds.masks.collator import MaskCollator
from ijepa_ds.masks.geometry import validate_mask_settings
from ijepa_ds.masks.multiblock import MultiBlockMaskSampler
from ijepa_ds.masks.overlay import render_mask_grid, render_mask_overlay, save_png
from ijepa_ds.masks.reference import ReferenceMaskSampler

MASK_SAMPLERS = {"step_seeded": MultiBlockMaskSampler, "reference": ReferenceMaskSampler}


def build_mask_sampler(sampler: str, **kwargs) -> MultiBlockMaskSampler | ReferenceMaskSampler:
    """Sampler for ``mask.sampler`` (``"step_seeded"`` or ``"reference"``); ``kwargs`` go to
    its constructor (grid_size, global_batch_size, seed, scales, counts, min_keep,
    allow_overlap; context_policy and group_size for ``"step_seeded"`` only)."""
    if sampler not in MASK_SAMPLERS:
        raise ValueError(f"mask.sampler={sampler!r} must be one of {sorted(MASK_SAMPLERS)}")
    return MASK_SAMPLERS[sampler](**kwargs)


def build_mask_sampler_from_config(cfg, global_batch_size: int, seed: int | None = None):
    """The sampler the ``mask`` section of ``cfg`` describes, on the grid of ``data.crop_size``
    / ``model.patch_size``; ``seed`` defaults to ``cfg.seed``. Training, validation and the
    memory planner all build their masks here."""
    grid = cfg.data.crop_size // cfg.model.patch_size
    m = cfg.mask
    # The reference sampler cuts per micro-batch whatever the policy (mask.context_policy doc).
    policy = {}
    if m.sampler == "step_seeded":
        policy = {"context_policy": m.context_policy, "group_size": m.group_size}
    return build_mask_sampler(
        m.sampler,
        grid_size=(grid, grid),
        global_batch_size=global_batch_size,
        seed=cfg.seed if seed is None else seed,
        enc_mask_scale=m.enc_mask_scale,
        pred_mask_scale=m.pred_mask_scale,
        aspect_ratio=m.aspect_ratio,
        nenc=m.num_enc_masks,
        npred=m.num_pred_masks,
        min_keep=m.min_keep,
        allow_overlap=m.allow_overlap,
        **policy,
    )


def context_may_pad(cfg) -> bool:
    """Whether some micro-batch of ``cfg`` can get context masks of unequal real lengths
    (padded with -1): under ``keep_all`` always; under ``group_min`` when a micro-batch of
    ``data.batch_size`` can span two groups of ``mask.group_size`` (a group that is the whole
    step, or micro-batches that tile the groups, never pad); never otherwise. A function of the
    config alone, so every rank answers the same."""
    m = cfg.mask
    if m.sampler != "step_seeded" or m.context_policy == "global_min":
        return False
    if m.context_policy == "keep_all":
        return True
    global_batch = cfg.data.global_batch_size
    if global_batch and m.group_size >= global_batch:
        return False
    return m.group_size % cfg.data.batch_size != 0


__all__ = [
    "MASK_SAMPLERS",
    "context_may_pad",
    "MaskCollator",
    "MultiBlockMaskSampler",
    "ReferenceMaskSampler",
    "build_mask_sampler",
    "build_mask_sampler_from_config",
    "render_mask_grid",
    "render_mask_overlay",
    "save_png",
    "validate_mask_settings",
]
