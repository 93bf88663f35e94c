"""The trainable half of I-JEPA (context encoder + predictor) as one module for one engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ijepa_ds.models import VisionTransformer, VisionTransformerPredictor


class IJEPAStudent(nn.Module):
    """Context encoder f_theta followed by the predictor g_phi.

    Both live in one ``nn.Module`` so one DeepSpeed engine owns all trainable parameters
    (one ZeRO partitioning, one optimizer with the four reference groups).
    """

    def __init__(self, encoder: VisionTransformer, predictor: VisionTransformerPredictor):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(
        self,
        imgs: torch.Tensor,
        masks_enc: Sequence[torch.Tensor],
        masks_pred: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """imgs: [B, C, H, W]; masks_enc: nenc x [B, K_enc]; masks_pred: npred x [B, K_pred].

        Returns predictions [B * nenc * npred, K_pred, D] in the reference's block-major order.
        """
        context = self.encoder(imgs, masks_enc)
        return self.predictor(context, masks_enc, masks_pred)
