"""One I-JEPA micro-step: target features, student prediction, loss, backward."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from ijepa_ds.loss import jepa_loss, make_targets, valid_targets


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compute_loss(
    engine,
    target,
    imgs: torch.Tensor,
    masks_enc: Sequence[torch.Tensor],
    masks_pred: Sequence[torch.Tensor],
    loss_kind: str,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of target and student, then the JEPA loss.

    Returns (loss: fp32 scalar still attached to the student's graph, h: [B, N, D] raw target
    features, for health statistics).

    imgs: [B, C, H, W]; masks_enc: nenc x [B, K_enc]; masks_pred: npred x [B, K_pred], with -1
    at padded entries (the loss then averages over real target tokens only).
    The target runs in fp32 weights (bf16 autocast in bf16 runs); the student's inputs are cast
    to the engine's dtype because DeepSpeed does not cast bf16 inputs itself.
    """
    with torch.no_grad(), _autocast(precision, imgs.device):
        h = target(imgs)
    h = h.float()
    targets = make_targets(h, masks_pred, len(masks_enc))
    student_imgs = imgs.to(torch.bfloat16) if precision == "bf16" else imgs
    z = engine(student_imgs, masks_enc, masks_pred)
    valid = valid_targets(masks_pred, len(masks_enc))
    return jepa_loss(z.float(), targets, loss_kind, valid), h


def move_batch(batch, device: torch.device):
    """(imgs, labels, positions, masks_enc, masks_pred) onto ``device`` (non-blocking)."""
    imgs, labels, positions, masks_enc, masks_pred = batch
    imgs = imgs.to(device, non_blocking=True)
    masks_enc = [m.to(device, non_blocking=True) for m in masks_enc]
    masks_pred = [m.to(device, non_blocking=True) for m in masks_pred]
    return imgs, labels, positions, masks_enc, masks_pred
