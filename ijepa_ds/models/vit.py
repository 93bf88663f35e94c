"""I-JEPA ViT encoder (context and target encoder): no [cls] token, fixed 2D sin-cos positions.

State-dict keys match the reference checkpoints: `pos_embed`, `patch_embed.proj.*`,
`blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ijepa_ds.config.schema import ENCODER_DIMS
from ijepa_ds.models.init import init_reference_weights, rescale_residual_init
from ijepa_ds.models.layers import PatchEmbed, build_blocks
from ijepa_ds.models.pos_embed import (
    POS_INTERP_MODES,
    get_2d_sincos_pos_embed,
    pos_embed_for_grid,
    to_grid,
)
from ijepa_ds.models.tokens import apply_masks, check_mask_gather, key_padding

# Architecture numbers of the paper's encoders (embed_dim / depth / num_heads, mlp_ratio).
# Constructor numbers by preset name ("huge"), from the config's one table (``ENCODER_DIMS``).
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    name.removeprefix("vit_"): {"embed_dim": dim, "depth": depth, "num_heads": heads}
    | ({} if ratio == 4.0 else {"mlp_ratio": ratio})
    for name, (dim, depth, heads, ratio) in ENCODER_DIMS.items()
}


class VisionTransformer(nn.Module):
    """ViT encoder over non-overlapping patches.

    Args:
        img_size: training image side, or (height, width); sets the stored position grid.
        patch_size: patch side p; the grid is (height / p, width / p).
        in_chans: image channels (3 for RGB; 1 for grey images such as Fashion-MNIST, which
            this project feeds as single-channel images rather than replicating to 3).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer shape.
        drop_rate, attn_drop_rate: dropout after projections / on attention weights.
        drop_path_rate: stochastic depth of the last block (linear from 0 over depth).
        norm_eps: LayerNorm epsilon (reference 1e-6).
        init_std: std of the truncated-normal weight init.
        rescale_init: divide block l's attn.proj / mlp.fc2 weights by sqrt(2 l) after init
            (off by default: the reference's effective init has no rescale).
        attn_impl: "auto" (eager for bf16 on CPU, else SDPA), "sdpa" (torch
            scaled_dot_product_attention) or "eager" (explicit softmax).
        pos_interp: how an input whose grid differs from img_size gets positions: "sincos"
            regenerates the fixed table for that grid, "bicubic" resizes the stored table.
        mask_gather: "index" (expanded-view gather) or "copy" (the reference's repeated
            index), see apply_masks.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
        rescale_init: bool = False,
        attn_impl: str = "sdpa",
        pos_interp: str = "sincos",
        mask_gather: str = "index",
    ) -> None:
        super().__init__()
        img_h, img_w = to_grid(img_size)
        if img_h % patch_size or img_w % patch_size:
            raise ValueError(
                f"img_size {img_h}x{img_w} is not a multiple of patch_size={patch_size}"
            )
        if pos_interp not in POS_INTERP_MODES:
            raise ValueError(
                f"unknown pos_interp {pos_interp!r}; expected one of {POS_INTERP_MODES}"
            )
        self.grid_size = (img_h // patch_size, img_w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.pos_interp = pos_interp
        self.mask_gather = check_mask_gather(mask_gather)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # A frozen Parameter, not a buffer: the reference optimizer groups (1-D / bias params)
        # and its checkpoints both see it.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches, embed_dim), requires_grad=False
        )
        self.blocks = build_blocks(
            depth,
            drop_path_rate,
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            norm_eps=norm_eps,
            attn_impl=attn_impl,
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.reset_parameters(init_std, rescale_init)

    @torch.no_grad()
    def reset_parameters(self, init_std: float = 0.02, rescale_init: bool = False) -> None:
        """Reference init of all weights and a fresh sin-cos table."""
        table = get_2d_sincos_pos_embed(self.embed_dim, self.grid_size)
        self.pos_embed.copy_(table.unsqueeze(0).to(self.pos_embed.device))
        init_reference_weights(self, init_std)
        if rescale_init:
            rescale_residual_init(self.blocks)

    def forward(
        self, x: torch.Tensor, masks: Sequence[torch.Tensor] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode images, keeping only the tokens the masks select.

        Args:
            x: [B, C, H, W] images, H and W multiples of patch_size (another size than
                img_size gets positions for its own grid, see pos_interp).
            masks: None, one [B, K] LongTensor, or a list of M of them: patch indices (raster
                order) to keep, -1 for padding. Positions are added before masking. Padded
                tokens are masked out as attention keys, so they change no real token.

        Returns:
            [B, N, D] without masks; [M * B, K, D] with masks, mask-major (apply_masks); rows
            at padded entries hold meaningless (finite) values.
        """
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self.patch_embed(x)
        x = x + pos_embed_for_grid(self.pos_embed, self.grid_size, grid, self.pos_interp)
        valid = None
        if masks is not None:
            masks = [masks] if isinstance(masks, torch.Tensor) else masks
            valid = key_padding(masks)
            x = apply_masks(x, masks, self.mask_gather, padded=valid is not None)
        for block in self.blocks:
            x = block(x) if valid is None else block(x, key_mask=valid)
        return self.norm(x)


def build_encoder(name: str, **overrides: Any) -> VisionTransformer:
    """Encoder from a preset name plus constructor overrides.

    `name` is a key of ENCODER_PRESETS, or "custom" (then embed_dim, depth and num_heads must
    be given). E.g. build_encoder("huge", img_size=224, patch_size=14).
    """
    if name == "custom":
        missing = [k for k in ("embed_dim", "depth", "num_heads") if k not in overrides]
        if missing:
            raise ValueError(f"encoder 'custom' needs {missing} in its overrides")
        return VisionTransformer(**overrides)
    if name not in ENCODER_PRESETS:
        choices = sorted(ENCODER_PRESETS) + ["custom"]
        raise ValueError(f"unknown encoder preset {name!r}; expected one of {choices}")
    return VisionTransformer(**{**ENCODER_PRESETS[name], **overrides})
