"""The trainable half of I-JEPA (context encoder + predictor) as one module for one engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ijepa_ds.models import (
    VisionTransformer,
    VisionTransformerPredictor,
    build_encoder,
    build_predictor,
)


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


def build_encoder_from_config(model_cfg, img_size: int) -> VisionTransformer:
    """The context encoder described by ``model_cfg`` (an ``ijepa_ds.config.ModelConfig``).

    ``attn_impl="auto"`` is handed to the model as is: each attention call resolves it from its
    activations (eager for bf16 on CPU, else SDPA; ``models.layers.resolve_attn_impl``, which
    logs each resolution once), so the bf16 engine's student and the fp32 target under bf16
    autocast, built from this encoder, both get the kernel their precision and device call for.
    """
    overrides = dict(
        img_size=img_size,
        patch_size=model_cfg.patch_size,
        in_chans=model_cfg.in_chans,
        qkv_bias=model_cfg.qkv_bias,
        drop_path_rate=model_cfg.drop_path_rate,
        norm_eps=model_cfg.norm_eps,
        init_std=model_cfg.init_std,
        rescale_init=model_cfg.rescale_init,
        attn_impl=model_cfg.attn_impl,
        mask_gather=model_cfg.mask_gather,
    )
    for name in ("embed_dim", "depth", "num_heads", "mlp_ratio"):
        value = getattr(model_cfg, name)
        if value:
            overrides[name] = value
    return build_encoder(model_cfg.name.removeprefix("vit_"), **overrides)


def build_predictor_from_config(
    model_cfg, encoder: VisionTransformer
) -> VisionTransformerPredictor:
    return build_predictor(
        encoder,
        predictor_embed_dim=model_cfg.pred_emb_dim,
        depth=model_cfg.pred_depth,
        num_heads=model_cfg.pred_num_heads or None,
        qkv_bias=model_cfg.qkv_bias,
        drop_path_rate=model_cfg.drop_path_rate,
        norm_eps=model_cfg.norm_eps,
        init_std=model_cfg.init_std,
        rescale_init=model_cfg.rescale_init,
        attn_impl=model_cfg.attn_impl,
        mask_gather=model_cfg.mask_gather,
        prune_last_block=model_cfg.predictor_prune_last,
    )
