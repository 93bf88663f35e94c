"""The trainable half of I-JEPA (context encoder + predictor) as one module for one engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ijepa_ds.models import VisionTransformer, VisionTransformerPredictor
from ijepa_ds.models.tokens import length_chunks


class IJEPAStudent(nn.Module):
    """Context encoder f_theta followed by the predictor g_phi.

    Both live in one ``nn.Module`` so one DeepSpeed engine owns all trainable parameters
    (one ZeRO partitioning, one optimizer with the four reference groups).

    ``context_chunks`` > 1 (``model.context_chunks``, used where the masks may hold padding:
    ``masks.context_may_pad``): the micro-batch is sorted by real context length and run as
    that many chunks, each padded only to its own longest, instead of one forward padded to the
    micro-batch's longest. Padded tokens change no real token (key-padding masks), so the
    result is the same up to rounding. The chunk count depends on the micro-batch size only,
    never on the masks, so every rank makes the same module calls (ZeRO-3 gathers each
    module's parameters once per chunk, collectively).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        predictor: VisionTransformerPredictor,
        context_chunks: int = 1,
    ):
        super().__init__()
        if context_chunks < 1:
            raise ValueError(f"context_chunks must be >= 1, got {context_chunks}")
        self.encoder = encoder
        self.predictor = predictor
        self.context_chunks = context_chunks

    def forward(
        self,
        imgs: torch.Tensor,
        masks_enc: Sequence[torch.Tensor],
        masks_pred: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """imgs: [B, C, H, W]; masks_enc: nenc x [B, K_enc]; masks_pred: npred x [B, K_pred].

        Returns predictions [B * nenc * npred, K_pred, D] in the reference's block-major order
        (row r * B + b: block r = p * nenc + e of sample b).
        """
        chunks = min(self.context_chunks, imgs.shape[0])
        if chunks == 1:
            return self._predict(imgs, masks_enc, masks_pred)
        return self._chunked(imgs, list(masks_enc), list(masks_pred), chunks)

    def _predict(self, imgs, masks_enc, masks_pred) -> torch.Tensor:
        context = self.encoder(imgs, masks_enc)
        return self.predictor(context, masks_enc, masks_pred)

    def _chunked(
        self,
        imgs: torch.Tensor,
        masks_enc: list[torch.Tensor],
        masks_pred: list[torch.Tensor],
        chunks: int,
    ) -> torch.Tensor:
        """One ``_predict`` per length chunk; rows merged back into the batch's order."""
        parts = length_chunks(masks_enc, chunks)
        outs = []
        for idx, width in parts:
            enc = [m[idx, :width] for m in masks_enc]
            z = self._predict(imgs[idx], enc, [m[idx] for m in masks_pred])  # [R * b, K, D]
            outs.append(z.reshape(-1, len(idx), *z.shape[1:]))
        order = torch.cat([idx for idx, _ in parts])
        z = torch.cat(outs, dim=1).index_select(1, torch.argsort(order))  # [R, B, K_pred, D]
        return z.reshape(-1, *z.shape[2:])
