"""Architecture numbers (constructor kwargs) of encoders and predictors.

From a state dict alone: reference checkpoints carry no config, so the shapes are read back
(a run's config gives them through `models.from_config`). The kwargs are what
`VisionTransformer(**kwargs)` and `VisionTransformerPredictor(**kwargs)` take, restricted to
what fixes the weights' shapes and the forward math (no dropout or init settings): they are
stored in consolidated checkpoints.
"""

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ijepa_ds.config.schema import ENCODER_DIMS

# Head counts of the paper's encoder widths (the presets'); they cannot be read from weights.
STANDARD_NUM_HEADS = {dim: heads for dim, _, heads, _ in ENCODER_DIMS.values()}
# Not stored in checkpoints either; the reference and every preset use 1e-6.
DEFAULT_NORM_EPS = 1e-6


def _require(state_dict: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"{what} state dict has no {key!r} (keys: {sorted(state_dict)[:8]} ...)")
    return state_dict[key]


def _depth(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"state dict has no contiguous {prefix}.0 .. {prefix}.N blocks")
    return len(indices)


def _mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio r with int(dim * r) == hidden, the way the blocks size their MLP."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:  # e.g. 1408 * (6144 / 1408) may round just below 6144
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _square_grid(num_tokens: int, key: str) -> tuple[int, int]:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"{key} holds {num_tokens} positions, not a square grid: give img_size explicitly"
        )
    return side, side


def _as_size(grid: tuple[int, int]) -> int | tuple[int, int]:
    return grid[0] if grid[0] == grid[1] else grid


def _heads_for(width: int, num_heads: int | None, what: str, flag: str) -> int:
    if num_heads is None:
        if width not in STANDARD_NUM_HEADS:
            raise ValueError(
                f"cannot infer the {what} head count for width {width} (not one of the standard "
                f"widths {sorted(STANDARD_NUM_HEADS)}): give num_heads ({flag})"
            )
        num_heads = STANDARD_NUM_HEADS[width]
    if width % num_heads:
        raise ValueError(f"{what} width {width} is not divisible by num_heads={num_heads}")
    return num_heads


def infer_encoder_kwargs(
    state_dict: Mapping[str, torch.Tensor],
    num_heads: int | None = None,
    img_size: int | tuple[int, int] | None = None,
) -> dict[str, Any]:
    """VisionTransformer kwargs that fit an encoder state dict (keys without `module.`).

    The patch grid comes from `pos_embed` [1, N, D] (square unless img_size is given);
    num_heads from STANDARD_NUM_HEADS unless given; norm_eps is the reference 1e-6.
    """
    proj = _require(state_dict, "patch_embed.proj.weight", "encoder")  # [D, C, p, p]
    embed_dim, in_chans, patch_h, patch_w = proj.shape
    if patch_h != patch_w:
        raise ValueError(f"non-square patches {patch_h}x{patch_w} are not supported")
    num_tokens = _require(state_dict, "pos_embed", "encoder").shape[1]
    if img_size is None:
        grid = _square_grid(num_tokens, "pos_embed")
    else:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        grid = (size[0] // patch_h, size[1] // patch_h)
        if grid[0] * grid[1] != num_tokens or size[0] % patch_h or size[1] % patch_h:
            raise ValueError(
                f"img_size {img_size} with patch {patch_h} gives a {grid[0]}x{grid[1]} grid, "
                f"but pos_embed holds {num_tokens} positions"
            )
    hidden = _require(state_dict, "blocks.0.mlp.fc1.weight", "encoder").shape[0]
    return {
        "img_size": _as_size((grid[0] * patch_h, grid[1] * patch_h)),
        "patch_size": int(patch_h),
        "in_chans": int(in_chans),
        "embed_dim": int(embed_dim),
        "depth": _depth(state_dict, "blocks"),
        "num_heads": _heads_for(int(embed_dim), num_heads, "encoder", "--num-heads"),
        "mlp_ratio": _mlp_ratio(int(hidden), int(embed_dim)),
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "norm_eps": DEFAULT_NORM_EPS,
    }


def infer_predictor_kwargs(
    state_dict: Mapping[str, torch.Tensor],
    num_heads: int | None,
    grid_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """VisionTransformerPredictor kwargs that fit a predictor state dict.

    num_heads cannot be read from the weights: the reference uses the encoder's head count,
    so callers pass that unless told otherwise. grid_size defaults to the square grid of
    `predictor_pos_embed`.
    """
    embed = _require(state_dict, "predictor_embed.weight", "predictor")  # [P, D]
    pred_dim, embed_dim = (int(s) for s in embed.shape)
    num_tokens = _require(state_dict, "predictor_pos_embed", "predictor").shape[1]
    grid = _square_grid(num_tokens, "predictor_pos_embed") if grid_size is None else grid_size
    if grid[0] * grid[1] != num_tokens:
        raise ValueError(f"grid {grid} does not fit predictor_pos_embed's {num_tokens} positions")
    if num_heads is None:
        raise ValueError("the predictor head count cannot be read from its weights: give it")
    hidden = _require(state_dict, "predictor_blocks.0.mlp.fc1.weight", "predictor").shape[0]
    return {
        "grid_size": (int(grid[0]), int(grid[1])),
        "embed_dim": embed_dim,
        "predictor_embed_dim": pred_dim,
        "depth": _depth(state_dict, "predictor_blocks"),
        "num_heads": _heads_for(pred_dim, num_heads, "predictor", "--pred-num-heads"),
        "mlp_ratio": _mlp_ratio(int(hidden), pred_dim),
        "qkv_bias": "predictor_blocks.0.attn.qkv.bias" in state_dict,
        "norm_eps": DEFAULT_NORM_EPS,
    }


def encoder_grid(encoder_kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """(grid_h, grid_w) patch grid of an encoder's kwargs."""
    size, patch = encoder_kwargs["img_size"], encoder_kwargs["patch_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return height // patch, width // patch
