"""I-JEPA targets and loss, with the reference train step's conventions.

Targets are the target encoder's full-image output, layer-normed over the feature dim (no
affine), then masked to the target blocks: masking the output, not the input.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ijepa_ds.models.tokens import apply_masks, key_padding, repeat_interleave_batch

LOSS_KINDS = ("smooth_l1", "l2")


def target_features(target_out: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> [B, N, D] layer-normed over D, no affine (torch's default eps 1e-5)."""
    return F.layer_norm(target_out, (target_out.shape[-1],))


def make_targets(
    target_out: torch.Tensor, masks_pred: Sequence[torch.Tensor], num_enc_masks: int
) -> torch.Tensor:
    """Regression targets aligned with the predictor's output.

    Args:
        target_out: [B, N, D] target-encoder output on the whole image (computed without
            gradients: the target encoder is an EMA, never trained).
        masks_pred: npred LongTensors [B, K_pred], the target patch indices.
        num_enc_masks: nenc, the number of context masks the predictor was given.

    Returns:
        [npred * nenc * B, K_pred, D], row (p * nenc + e) * B + b = normalised features of
        sample b at target block p (the same for every context view e).
    """
    features = target_features(target_out)
    batch = features.shape[0]
    features = apply_masks(features, masks_pred)  # clamps -1 padding (rows left out of the loss)
    return repeat_interleave_batch(features, batch, repeat=num_enc_masks)


def valid_targets(masks_pred: Sequence[torch.Tensor], num_enc_masks: int) -> torch.Tensor | None:
    """Real (not padded) target rows aligned with ``make_targets``: bool [npred * nenc * B,
    K_pred], or None when no target mask holds padding (-1)."""
    valid = key_padding(masks_pred)
    if valid is None:
        return None
    return repeat_interleave_batch(valid, masks_pred[0].shape[0], repeat=num_enc_masks)


def jepa_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str = "smooth_l1",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean distance between predicted and target features over all elements -> scalar.

    pred, target: [R, K, D]. kind "smooth_l1": Huber with beta 1 (the reference code); "l2":
    mean squared error (the paper's formulation). valid: None (every row counts), or bool
    [R, K] from ``valid_targets``: the mean then runs over the real target tokens only.
    """
    if valid is not None:
        pred, target = pred[valid], target[valid]  # [real tokens, D]
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
