"""Mask statistics of one optimizer step, sampled exactly as training samples it.

Each of ``W`` ranks builds its own sampler (as each training process does) and collates its
``A`` micro-batches (accumulation from the config) of global positions
``s * G + (m * W + r) * b + [0, b)`` (``GlobalPositionSampler``) through ``MaskCollator``.
Drawn context sizes come from the sampler's step layout (context block minus targets, before
any cut); kept sizes and padding are read off the collated masks (``-1`` = padding). Beside
the memory planner because both sample the training masks of a config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ijepa_ds.config import gradient_accumulation_steps, resolved_global_batch
from ijepa_ds.data.sampler import GlobalPositionSampler
from ijepa_ds.masks.collator import MaskCollator

# One collated micro-batch: (positions [b], masks_enc nenc x [b, K], masks_pred npred x [b, K']).
MicroBatch = tuple[np.ndarray, list[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class MaskStats:
    """Context/target token counts of one step; means are per sample and mask."""

    policy: str
    world_size: int
    step: int
    global_batch_size: int
    micro_batch_size: int
    accumulation: int
    group_size: int
    context_drawn_mean: float  # context block minus targets, before any cut
    context_kept_mean: float  # real (unpadded) context tokens the encoder sees
    context_kept_fraction: float  # kept / drawn, over the whole step
    target_kept_fraction: float  # real target tokens / target block patches
    padding_fraction: float  # padded share of the collated context masks (0 without padding)
    computed_padding_fraction: float  # padded share of what the encoder computes: after the
    # student's length chunks (model.context_chunks, where the masks can pad)
    context_width_min: int  # narrowest / widest context tensor of the step's micro-batches
    context_width_max: int

    def as_dict(self) -> dict:
        return asdict(self)


def step_micro_batches(cfg, world_size: int, step: int = 0) -> list[MicroBatch]:
    """Every micro-batch of optimizer ``step`` on ``world_size`` ranks, rank by rank, each
    collated by that rank's own ``MaskCollator`` as training collates it."""
    from ijepa_ds.masks import build_mask_sampler_from_config

    global_batch = resolved_global_batch(cfg.data, world_size)
    accumulation = gradient_accumulation_steps(cfg.data, world_size)
    out = []
    for rank in range(world_size):
        collate = MaskCollator(build_mask_sampler_from_config(cfg, global_batch))
        positions = GlobalPositionSampler(
            global_batch * (step + 1), global_batch, cfg.data.batch_size, rank, world_size,
            cfg.seed,
        )  # fmt: skip
        for micro in range(accumulation):
            items = [(_PIXEL, 0, p) for p in positions.micro_batch_positions(step, micro)]
            _, _, pos, masks_enc, masks_pred = collate(items)
            out.append((pos.numpy(), masks_enc, masks_pred))
    return out


_PIXEL = torch.zeros(1, 1, 1)  # stand-in image: the statistics need the masks only


def mask_stats(cfg, world_size: int, step: int = 0) -> MaskStats:
    """Statistics of ``step`` on ``world_size`` ranks (``mask.sampler=step_seeded`` only: the
    reference sampler does not expose its drawn context sizes)."""
    from ijepa_ds.masks import build_mask_sampler_from_config

    if cfg.mask.sampler != "step_seeded":
        raise ValueError(
            f"mask.sampler={cfg.mask.sampler!r}: masks stats needs mask.sampler=step_seeded"
        )
    global_batch = resolved_global_batch(cfg.data, world_size)
    sampler = build_mask_sampler_from_config(cfg, global_batch)
    layout = sampler.step_layout(step)
    batches = step_micro_batches(cfg, world_size, step)
    enc = [m for _, masks_enc, _ in batches for m in masks_enc]
    pred = [m for _, _, masks_pred in batches for m in masks_pred]
    kept = sum(int((m >= 0).sum()) for m in enc)
    drawn = int(layout.counts.sum())
    pred_drawn = global_batch * sampler.npred * layout.pred_hw[0] * layout.pred_hw[1]
    return MaskStats(
        policy=cfg.mask.context_policy,
        world_size=world_size,
        step=step,
        global_batch_size=global_batch,
        micro_batch_size=cfg.data.batch_size,
        accumulation=gradient_accumulation_steps(cfg.data, world_size),
        group_size=sampler.group_size,
        context_drawn_mean=drawn / layout.counts.size,
        context_kept_mean=kept / layout.counts.size,
        context_kept_fraction=kept / drawn,
        target_kept_fraction=sum(int((m >= 0).sum()) for m in pred) / pred_drawn,
        padding_fraction=sum(int((m < 0).sum()) for m in enc) / sum(m.numel() for m in enc),
        computed_padding_fraction=1.0 - kept / computed_context(cfg, batches),
        context_width_min=min(m.shape[1] for m in enc),
        context_width_max=max(m.shape[1] for m in enc),
    )


def computed_context(cfg, batches: list[MicroBatch]) -> int:
    """Context tokens the encoder computes over ``batches``, padding included: each
    micro-batch in ``model.context_chunks`` length chunks where the masks can pad
    (``IJEPAStudent``), else at its collated width."""
    from ijepa_ds.masks import context_may_pad
    from ijepa_ds.models.tokens import length_chunks

    chunks = cfg.model.context_chunks if context_may_pad(cfg) else 1
    total = 0
    for _, masks_enc, _ in batches:
        parts = length_chunks(masks_enc, chunks)
        total += len(masks_enc) * sum(len(idx) * width for idx, width in parts)
    return total


def format_table(stats: MaskStats) -> str:
    """A human-readable two-column table of ``stats``, one field a line."""
    rows = stats.as_dict()
    width = max(len(k) for k in rows)
    lines = []
    for key, value in rows.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines) + "\n"
