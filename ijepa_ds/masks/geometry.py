"""Block geometry shared by the mask samplers, and the up-front check of mask settings.

Size rule (the reference's, so both samplers draw the same size distribution)::

    n = floor(H * W * scale)                      scale ~ U(scale_min, scale_max)
    h = rint(sqrt(n * aspect)), w = rint(sqrt(n / aspect))     aspect = height / width

``rint`` rounds half to even, like Python's ``round``. ``MultiBlockMaskSampler`` clamps the
sides to ``[1, H] x [1, W]``; the reference clamps them to ``H - 1`` / ``W - 1`` and has no lower
clamp. Rounding bounds, which the tests rely on: an unclamped side is within 1/2 of its real
value, so ``(sqrt(n a) - 1/2) (sqrt(n / a) - 1/2) <= h w <= (sqrt(n a) + 1/2) (sqrt(n / a) + 1/2)``
and the realised aspect ``h / w`` lies between ``(sqrt(n a) -+ 1/2) / (sqrt(n / a) +- 1/2)``.

Corners: a block of side ``h`` has ``H - h + 1`` possible top rows, drawn with
``floor(u * (H - h + 1))`` for a uniform ``u`` in [0, 1); the reference drew from ``H - h`` rows
and so never reached the last row or column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONTEXT_POLICIES = ("global_min", "group_min", "keep_all")  # mask.context_policy


def block_count(u: np.ndarray | float, scale: Sequence[float], grid_h: int, grid_w: int):
    """Patch budget ``n = floor(H * W * (lo + u * (hi - lo)))``, shaped like ``u``."""
    lo, hi = scale
    return np.floor(grid_h * grid_w * (lo + np.asarray(u) * (hi - lo))).astype(np.int64)


def block_dims(
    n: np.ndarray | int,
    aspect: np.ndarray | float,
    max_h: int,
    max_w: int,
    min_side: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Block height and width for patch budget ``n`` and aspect ``h / w``, clamped to
    ``[min_side, max_h] x [min_side, max_w]``. Inputs broadcast; outputs are int64 arrays."""
    n = np.asarray(n, dtype=np.float64)
    aspect = np.asarray(aspect, dtype=np.float64)
    h = np.clip(np.rint(np.sqrt(n * aspect)), min_side, max_h).astype(np.int64)
    w = np.clip(np.rint(np.sqrt(n / aspect)), min_side, max_w).astype(np.int64)
    return h, w


def block_corner(u: np.ndarray, grid: int, side: int | np.ndarray) -> np.ndarray:
    """Top (or left) coordinate of a block of ``side`` patches, uniform over all ``grid - side + 1``
    placements, the last row / column included. ``u``: uniforms in [0, 1), any shape."""
    span = grid - np.asarray(side, dtype=np.int64) + 1
    # min() guards the float product u * span against rounding up to span for u close to 1.
    return np.minimum(np.floor(u * span).astype(np.int64), span - 1)


def _aspect_candidates(n: int, aspect: Sequence[float]) -> np.ndarray:
    """Aspects in ``[lo, hi]`` at which ``block_dims(n, .)`` can change value (rounding
    thresholds of either side), plus the midpoints between them: evaluating the size rule there
    visits every reachable (h, w) for this n."""
    lo, hi = float(aspect[0]), float(aspect[1])
    if n <= 0 or lo == hi:
        return np.array([lo, hi])
    half = np.arange(0, int(math.sqrt(n * max(hi, 1.0 / lo))) + 2) + 0.5
    cuts = np.concatenate([half**2 / n, n / half**2])
    pts = np.unique(np.concatenate([[lo, hi], cuts[(cuts > lo) & (cuts < hi)]]))
    return np.concatenate([pts, (pts[1:] + pts[:-1]) / 2])


def reachable_block_dims(
    grid_h: int,
    grid_w: int,
    scale: Sequence[float],
    aspect: Sequence[float],
    max_h: int | None = None,
    max_w: int | None = None,
    min_side: int = 1,
) -> list[tuple[int, int]]:
    """Every (h, w) the size rule can produce for scales in ``scale`` and aspects in ``aspect``
    (sorted by area). Scale and aspect are treated as independent, so for the reference sampler,
    which drives both from one uniform, this is a superset of what it can draw."""
    max_h = grid_h if max_h is None else max_h
    max_w = grid_w if max_w is None else max_w
    n_lo, n_hi = (int(v) for v in block_count(np.array([0.0, 1.0]), scale, grid_h, grid_w))
    dims: set[tuple[int, int]] = set()
    for n in range(n_lo, n_hi + 1):
        hs, ws = block_dims(n, _aspect_candidates(n, aspect), max_h, max_w, min_side)
        dims.update(zip(hs.tolist(), ws.tolist(), strict=True))
    return sorted(dims, key=lambda d: (d[0] * d[1], d))


def _check_interval(name: str, value: Sequence[float], upper: float | None) -> None:
    """``value`` must be a (min, max) pair with ``0 < min <= max`` (``<= upper`` if given)."""
    if len(value) != 2:
        raise ValueError(f"{name}={tuple(value)!r} must be a (min, max) pair")
    lo, hi = float(value[0]), float(value[1])
    bound = f"0 < min <= max <= {upper}" if upper is not None else "0 < min <= max"
    if not (lo > 0 and lo <= hi and (upper is None or hi <= upper)):
        raise ValueError(f"{name}={(lo, hi)!r} violates {bound}")


def check_basic_settings(
    grid_h: int,
    grid_w: int,
    enc_scale: Sequence[float],
    pred_scale: Sequence[float],
    aspect_ratio: Sequence[float],
    nenc: int,
    npred: int,
    min_keep: int,
) -> None:
    """Range checks shared by both samplers; raises ``ValueError`` naming the setting."""
    if int(grid_h) != grid_h or int(grid_w) != grid_w or grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid_size=({grid_h}, {grid_w}) must be two positive integers")
    _check_interval("mask.enc_mask_scale", enc_scale, 1.0)
    _check_interval("mask.pred_mask_scale", pred_scale, 1.0)
    _check_interval("mask.aspect_ratio", aspect_ratio, None)
    for name, value in (
        ("mask.num_enc_masks", nenc),
        ("mask.num_pred_masks", npred),
        ("mask.min_keep", min_keep),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")


def validate_mask_settings(
    grid_h: int,
    grid_w: int,
    enc_scale: Sequence[float],
    pred_scale: Sequence[float],
    aspect_ratio: Sequence[float],
    nenc: int,
    npred: int,
    min_keep: int,
    allow_overlap: bool,
) -> None:
    """Reject, with a ``ValueError`` naming the setting, value and rule, any configuration that
    ``MultiBlockMaskSampler`` could not always satisfy.

    Rules beyond the ranges: every reachable target block has ``>= min_keep`` patches; every
    reachable context block has ``>= min_keep`` patches; without overlap, the smallest context
    block minus the largest target block keeps ``>= min_keep`` patches. The last rule is what
    makes the sampler's fallback (all targets stacked on one block) always valid, so sampling
    never needs more than a bounded number of tries.
    """
    check_basic_settings(grid_h, grid_w, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep)
    grid = f"{grid_h}x{grid_w} patch grid"
    pred_dims = reachable_block_dims(grid_h, grid_w, pred_scale, aspect_ratio)
    enc_dims = reachable_block_dims(grid_h, grid_w, enc_scale, (1.0, 1.0))
    (ph, pw), (eh, ew) = pred_dims[0], enc_dims[0]
    if ph * pw < min_keep:
        raise ValueError(
            f"mask.min_keep={min_keep} exceeds the smallest target block the settings can draw "
            f"({ph}x{pw} = {ph * pw} patches on the {grid} with mask.pred_mask_scale="
            f"{tuple(pred_scale)}, mask.aspect_ratio={tuple(aspect_ratio)}); rule: every target "
            f"block must hold >= mask.min_keep patches (lower min_keep or raise the scale)"
        )
    if eh * ew < min_keep:
        raise ValueError(
            f"mask.enc_mask_scale={tuple(enc_scale)} gives a context block of {eh}x{ew} = "
            f"{eh * ew} patches on the {grid}, fewer than mask.min_keep={min_keep}"
        )
    qh, qw = pred_dims[-1]
    if not allow_overlap and eh * ew - qh * qw < min_keep:
        raise ValueError(
            f"mask.enc_mask_scale={tuple(enc_scale)} is too small for mask.pred_mask_scale="
            f"{tuple(pred_scale)} and mask.min_keep={min_keep} on the {grid}: the smallest "
            f"context block ({eh}x{ew}) minus the largest target block ({qh}x{qw}) must keep "
            f">= mask.min_keep patches when mask.allow_overlap=False"
        )


def check_group_size(context_policy: str, group_size: int, global_batch_size: int) -> int:
    """The group size ``group_min`` uses: ``group_size`` capped at the step. ValueError for an
    unknown policy, a group size < 1, or (under ``group_min``) a group size smaller than the step
    that does not divide it: groups must tile every step identically."""
    if context_policy not in CONTEXT_POLICIES:
        raise ValueError(
            f"mask.context_policy={context_policy!r} must be one of {list(CONTEXT_POLICIES)}"
        )
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"mask.group_size={group_size!r} must be an integer >= 1")
    group = min(int(group_size), global_batch_size)
    if context_policy == "group_min" and global_batch_size % group:
        raise ValueError(
            f"mask.group_size={group_size} must divide the global batch "
            f"(data.global_batch_size={global_batch_size}) for mask.context_policy=group_min"
        )
    return group
