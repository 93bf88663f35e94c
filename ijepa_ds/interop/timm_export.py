"""Target encoder -> timm `VisionTransformer` (timm 1.x), for use outside this project.

Our encoder is timm's ViT with: no class token, the fixed position table added to every
patch token (timm's `pos_embed` [1, N, D] with class_token=False), qkv bias, exact GELU, and
the final LayerNorm applied per token (timm `fc_norm=False`, so `norm` stays before pooling;
timm's default for global_pool="avg" would move it after the pool). Module names agree, so the
state dict carries over key for key:

    timm_model.forward_features(x)                 == encoder(x)            [B, N, D]
    timm_model.forward_head(f, pre_logits=True)    == encoder(x).mean(1)    [B, D]

The file stores the state dict plus `timm_kwargs` (JSON-able; `norm_eps` stands for
`norm_layer=partial(nn.LayerNorm, eps=norm_eps)`, which `build_timm_model` passes).
"""

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ijepa_ds.fileio import atomic_save
from ijepa_ds.interop.consolidated import standalone_copier, validate_consolidated

FORMAT = "ijepa_ds.timm_vit"
SUFFIXES = (".safetensors", ".pt")


def timm_kwargs(encoder_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-able `timm.models.vision_transformer.VisionTransformer` kwargs for our encoder
    (plus `norm_eps`, see `build_timm_model`)."""
    size = encoder_kwargs["img_size"]
    return {
        "img_size": size if isinstance(size, int) else list(size),
        "patch_size": encoder_kwargs["patch_size"],
        "in_chans": encoder_kwargs.get("in_chans", 3),
        "num_classes": 0,
        "global_pool": "avg",
        "embed_dim": encoder_kwargs["embed_dim"],
        "depth": encoder_kwargs["depth"],
        "num_heads": encoder_kwargs["num_heads"],
        "mlp_ratio": encoder_kwargs.get("mlp_ratio", 4.0),
        "qkv_bias": encoder_kwargs.get("qkv_bias", True),
        "class_token": False,
        "no_embed_class": True,
        "fc_norm": False,
        "norm_eps": encoder_kwargs.get("norm_eps", 1e-6),
    }


def build_timm_model(kwargs: Mapping[str, Any]) -> nn.Module:
    """A timm VisionTransformer (random init) from our encoder kwargs or from `timm_kwargs`."""
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(kwargs) if "class_token" in kwargs else timm_kwargs(kwargs)
    eps = kw.pop("norm_eps")
    if isinstance(kw["img_size"], list):
        kw["img_size"] = tuple(kw["img_size"])
    return VisionTransformer(**kw, norm_layer=partial(nn.LayerNorm, eps=eps))


def timm_state_dict(encoder_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm state dict of an encoder state dict (our key names are timm's): fp32 tensors,
    copied only where safetensors needs it (``standalone_copier``)."""
    standalone = standalone_copier()
    return {k.removeprefix("module."): standalone(v.float()) for k, v in encoder_state.items()}


def export_timm(consolidated: Mapping[str, Any], path: str | Path) -> Path:
    """Write the TARGET encoder (the one to evaluate) for timm, atomically.

    `.safetensors`: tensors + metadata {"format", "timm_kwargs" (JSON), "step"};
    `.pt`: {"format", "state_dict", "timm_kwargs", "step"} (torch.load weights_only=True).
    """
    validate_consolidated(consolidated, "consolidated checkpoint")
    return export_timm_encoder(
        consolidated["target_encoder"], consolidated["encoder_kwargs"], consolidated["step"], path
    )


def export_timm_encoder(
    encoder_state: Mapping[str, torch.Tensor],
    encoder_kwargs: Mapping[str, Any],
    step: int,
    path: str | Path,
) -> Path:
    """Write one encoder state dict (the target's) with its constructor kwargs for timm,
    atomically; ``export_timm`` does this for a consolidated checkpoint."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: a timm export ends in {' or '.join(SUFFIXES)}")
    state = timm_state_dict(encoder_state)
    kwargs = timm_kwargs(encoder_kwargs)
    if path.suffix == ".pt":
        payload = {"format": FORMAT, "state_dict": state, "timm_kwargs": kwargs, "step": step}
        return atomic_save(path, lambda tmp: torch.save(payload, tmp))
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "timm_kwargs": json.dumps(kwargs), "step": str(step)}
    return atomic_save(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_timm_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, timm_kwargs) of a file written by `export_timm`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        kwargs = json.loads(meta.get("timm_kwargs", "null"))
    else:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state, kwargs, meta = payload.get("state_dict"), payload.get("timm_kwargs"), payload
    if meta.get("format") != FORMAT or kwargs is None:
        raise ValueError(f"{path}: not a timm export of ijepa-ds (format {meta.get('format')!r})")
    return state, kwargs
