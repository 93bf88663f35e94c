"""A run's config -> the encoder and predictor it trains: the one place that maps the ``model``
section (with ``data.crop_size``) to constructor arguments.

``*_kwargs_from_config`` hold what fixes the weights' shapes and the forward math (they are
recorded in checkpoints and compared on resume and conversion); ``build_*_from_config`` add the
training-only settings (drop path, init, kernels) and build the modules.
"""

from __future__ import annotations

from typing import Any

from ijepa_ds.config import Config, resolve_model_dims
from ijepa_ds.models.predictor import PREDICTOR_MLP_RATIO, VisionTransformerPredictor
from ijepa_ds.models.vit import VisionTransformer


def encoder_kwargs_from_config(cfg: Config) -> dict[str, Any]:
    """Architecture kwargs of the encoder ``cfg`` trains (``VisionTransformer(**kwargs)``)."""
    dims = resolve_model_dims(cfg.model)
    return {
        "img_size": cfg.data.crop_size,
        "patch_size": cfg.model.patch_size,
        "in_chans": cfg.model.in_chans,
        "embed_dim": dims.embed_dim,
        "depth": dims.depth,
        "num_heads": dims.num_heads,
        "mlp_ratio": dims.mlp_ratio,
        "qkv_bias": cfg.model.qkv_bias,
        "norm_eps": cfg.model.norm_eps,
    }


def predictor_kwargs_from_config(cfg: Config) -> dict[str, Any]:
    """Architecture kwargs of the predictor ``cfg`` trains: the encoder's grid and width, and
    ``PREDICTOR_MLP_RATIO`` whatever the encoder's (as the reference builds it)."""
    dims = resolve_model_dims(cfg.model)
    grid = cfg.data.crop_size // cfg.model.patch_size
    return {
        "grid_size": (grid, grid),
        "embed_dim": dims.embed_dim,
        "predictor_embed_dim": cfg.model.pred_emb_dim,
        "depth": cfg.model.pred_depth,
        "num_heads": dims.pred_num_heads,
        "mlp_ratio": PREDICTOR_MLP_RATIO,
        "qkv_bias": cfg.model.qkv_bias,
        "norm_eps": cfg.model.norm_eps,
    }


def _training_kwargs(model_cfg) -> dict[str, Any]:
    """Settings that change neither the weights' shapes nor the eval-mode forward.

    ``attn_impl="auto"`` is handed to the model as is: each attention call resolves it from its
    activations (eager for bf16 on CPU, else SDPA; ``models.layers.resolve_attn_impl``), so the
    bf16 engine's student and the fp32 target under autocast each get the kernel they need.
    """
    return {
        "drop_path_rate": model_cfg.drop_path_rate,
        "init_std": model_cfg.init_std,
        "rescale_init": model_cfg.rescale_init,
        "attn_impl": model_cfg.attn_impl,
        "mask_gather": model_cfg.mask_gather,
    }


def build_encoder_from_config(cfg: Config) -> VisionTransformer:
    """The context encoder of ``cfg`` (random init; seed first for identical ranks)."""
    return VisionTransformer(**encoder_kwargs_from_config(cfg), **_training_kwargs(cfg.model))


def build_predictor_from_config(cfg: Config) -> VisionTransformerPredictor:
    """The predictor of ``cfg``; build it right after the encoder (same RNG order as the
    reference)."""
    return VisionTransformerPredictor(
        **predictor_kwargs_from_config(cfg),
        **_training_kwargs(cfg.model),
        prune_last_block=cfg.model.predictor_prune_last,
    )
