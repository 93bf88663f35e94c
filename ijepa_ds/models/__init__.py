"""I-JEPA networks: ViT encoder, predictor, position tables and token helpers.

Pure torch modules: nothing here imports DeepSpeed or torch.distributed.
"""

from ijepa_ds.models.init import init_reference_weights, rescale_residual_init
from ijepa_ds.models.layers import (
    ATTN_IMPLS,
    MLP,
    Attention,
    Block,
    DropPath,
    PatchEmbed,
    apply_attn_impl,
)
from ijepa_ds.models.pos_embed import (
    adapt_pos_embed,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    pos_embed_for_grid,
    resize_pos_embed,
)
from ijepa_ds.models.predictor import VisionTransformerPredictor, build_predictor
from ijepa_ds.models.tokens import apply_masks, repeat_interleave_batch
from ijepa_ds.models.vit import ENCODER_PRESETS, VisionTransformer, build_encoder

__all__ = [
    "ATTN_IMPLS",
    "ENCODER_PRESETS",
    "MLP",
    "Attention",
    "Block",
    "DropPath",
    "PatchEmbed",
    "VisionTransformer",
    "VisionTransformerPredictor",
    "adapt_pos_embed",
    "apply_attn_impl",
    "apply_masks",
    "build_encoder",
    "build_predictor",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "init_reference_weights",
    "pos_embed_for_grid",
    "repeat_interleave_batch",
    "rescale_residual_init",
    "resize_pos_embed",
]
