"""I-JEPA predictor: a narrow ViT that predicts target-block features from context tokens.

State-dict keys match the reference checkpoints: `predictor_embed.*`, `mask_token`,
`predictor_pos_embed`, `predictor_blocks.{i}.*`, `predictor_norm.*`, `predictor_proj.*`.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ijepa_ds.models.init import init_reference_weights, rescale_residual_init, trunc_normal_
from ijepa_ds.models.layers import build_blocks
from ijepa_ds.models.pos_embed import get_2d_sincos_pos_embed, to_grid
from ijepa_ds.models.tokens import (
    apply_masks,
    check_mask_gather,
    key_padding,
    repeat_interleave_batch,
)
from ijepa_ds.models.vit import VisionTransformer

# The predictor's MLP ratio whatever the encoder's (ViT-G's is 48/11), as the reference builds it.
PREDICTOR_MLP_RATIO = 4.0


def _as_list(masks: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    return [masks] if isinstance(masks, torch.Tensor) else list(masks)


class VisionTransformerPredictor(nn.Module):
    """Context tokens + one shared learnable mask token per target position -> target features.

    Args:
        num_patches: patches of a square grid (as the reference); or give grid_size instead.
        embed_dim: encoder width D (input and output width).
        predictor_embed_dim: predictor width P.
        depth, num_heads, mlp_ratio, qkv_bias: transformer shape.
        drop_rate, attn_drop_rate, drop_path_rate, norm_eps, init_std, rescale_init,
            attn_impl: as for VisionTransformer.
        grid_size: (grid_h, grid_w) patch grid, for non-square grids.
        mask_gather: "index" or "copy", as for VisionTransformer.
        prune_last_block: run the last block for the mask-token rows only (the context rows
            still give keys and values). Exact: those are the only rows the output keeps; off
            gives the reference's full-sequence computation (for benchmarks).
    """

    def __init__(
        self,
        num_patches: int | None = None,
        embed_dim: int = 768,
        predictor_embed_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = PREDICTOR_MLP_RATIO,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
        rescale_init: bool = False,
        attn_impl: str = "sdpa",
        grid_size: int | tuple[int, int] | None = None,
        mask_gather: str = "index",
        prune_last_block: bool = True,
    ) -> None:
        super().__init__()
        self.grid_size = _resolve_grid(num_patches, grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.embed_dim = embed_dim
        self.predictor_embed_dim = predictor_embed_dim
        self.mask_gather = check_mask_gather(mask_gather)
        self.prune_last_block = prune_last_block
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        self.predictor_pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches, predictor_embed_dim), requires_grad=False
        )
        self.predictor_blocks = build_blocks(
            depth,
            drop_path_rate,
            dim=predictor_embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            norm_eps=norm_eps,
            attn_impl=attn_impl,
        )
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=norm_eps)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim)
        self.reset_parameters(init_std, rescale_init)

    @torch.no_grad()
    def reset_parameters(self, init_std: float = 0.02, rescale_init: bool = False) -> None:
        """Reference init of all weights, the mask token and a fresh sin-cos table."""
        table = get_2d_sincos_pos_embed(self.predictor_embed_dim, self.grid_size)
        self.predictor_pos_embed.copy_(table.unsqueeze(0).to(self.predictor_pos_embed.device))
        trunc_normal_(self.mask_token, std=init_std)
        init_reference_weights(self, init_std)
        if rescale_init:
            rescale_residual_init(self.predictor_blocks)

    def forward(
        self,
        x: torch.Tensor,
        masks_x: Sequence[torch.Tensor] | torch.Tensor,
        masks: Sequence[torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        """Predict every target block from every context view, all in one batched pass.

        Args:
            x: [nenc * B, K_ctx, D] encoder output for the nenc context masks (mask-major).
            masks_x: nenc LongTensors [B, K_ctx], the context patch indices (-1 = padding).
            masks: npred LongTensors [B, K_pred], the target patch indices (-1 = padding).

        Returns:
            [npred * nenc * B, K_pred, D], row (p * nenc + e) * B + b predicting target
            block p of sample b from context view e (the reference ordering, which the
            targets from loss.make_targets follow). Padded entries are no attention keys;
            their rows are meaningless and left out of the loss (loss.valid_targets).
        """
        masks_x, masks = _as_list(masks_x), _as_list(masks)
        if not masks_x or not masks or x.shape[0] % len(masks_x) != 0:
            raise ValueError(
                f"need >= 1 context and target mask and a batch divisible by the number of "
                f"context masks; got batch {x.shape[0]}, {len(masks_x)} context, "
                f"{len(masks)} target masks"
            )
        batch = x.shape[0] // len(masks_x)
        pos_table = self.predictor_pos_embed.expand(batch, -1, -1)

        ctx_valid, tgt_valid = key_padding(masks_x), key_padding(masks)  # None: no padding
        ctx_pos = apply_masks(pos_table, masks_x, self.mask_gather, ctx_valid is not None)
        x = self.predictor_embed(x) + ctx_pos
        num_ctx = x.shape[1]

        # One group of mask tokens per (target block, context view): each block is predicted
        # separately by stacking the groups along the batch.
        target_pos = repeat_interleave_batch(
            apply_masks(pos_table, masks, self.mask_gather, tgt_valid is not None),
            batch,
            repeat=len(masks_x),
        )
        pred_tokens = self.mask_token + target_pos
        x = torch.cat([x.repeat(len(masks), 1, 1), pred_tokens], dim=1)

        valid = _predictor_key_mask(ctx_valid, tgt_valid, masks_x, masks, batch)
        extra = {} if valid is None else {"key_mask": valid}
        blocks = list(self.predictor_blocks)
        prune = self.prune_last_block and len(blocks) > 0
        for block in blocks[:-1] if prune else blocks:
            x = block(x, **extra)
        # Only the mask-token rows are predictions; norm and proj act row by row, so slicing
        # before them (or pruning the last block to those rows) changes nothing in the result.
        x = blocks[-1](x, query_from=num_ctx, **extra) if prune else x[:, num_ctx:]
        return self.predictor_proj(self.predictor_norm(x))


def _predictor_key_mask(
    ctx: torch.Tensor | None,
    tgt: torch.Tensor | None,
    masks_x: list[torch.Tensor],
    masks: list[torch.Tensor],
    batch: int,
) -> torch.Tensor | None:
    """bool [npred * nenc * B, K_ctx + K_pred] (True = real token) in the predictor's row order:
    context validity ``ctx`` [nenc * B, K_ctx] repeated per target block, target validity
    ``tgt`` [npred * B, K_pred] per context view (``key_padding``; None = no padding); None
    when neither holds padding."""
    if ctx is None and tgt is None:
        return None
    device = masks_x[0].device
    if ctx is None:
        ctx = torch.ones(len(masks_x) * batch, masks_x[0].shape[1], dtype=torch.bool, device=device)
    if tgt is None:
        tgt = torch.ones(len(masks) * batch, masks[0].shape[1], dtype=torch.bool, device=device)
    tgt = repeat_interleave_batch(tgt, batch, repeat=len(masks_x))
    return torch.cat([ctx.repeat(len(masks), 1), tgt], dim=1)


def _resolve_grid(
    num_patches: int | None, grid_size: int | tuple[int, int] | None
) -> tuple[int, int]:
    if (num_patches is None) == (grid_size is None):
        raise ValueError("give exactly one of num_patches (square grid) or grid_size")
    if grid_size is not None:
        return to_grid(grid_size)
    side = round(num_patches**0.5)
    if side * side != num_patches:
        raise ValueError(f"num_patches={num_patches} is not a square grid: pass grid_size")
    return side, side


def build_predictor(
    encoder: VisionTransformer,
    predictor_embed_dim: int = 384,
    depth: int = 6,
    num_heads: int | None = None,
    **overrides: Any,
) -> VisionTransformerPredictor:
    """Predictor matching `encoder`'s grid and width; num_heads defaults to the encoder's
    (as the reference builds it)."""
    return VisionTransformerPredictor(
        embed_dim=encoder.embed_dim,
        predictor_embed_dim=predictor_embed_dim,
        depth=depth,
        num_heads=encoder.num_heads if num_heads is None else num_heads,
        grid_size=encoder.grid_size,
        **overrides,
    )
