"""Reference weight initialisation for the encoder and the predictor.

Effective reference init (docs/reference.md section 2): every Linear and the patch-embedding
Conv2d get trunc_normal(std=init_std) weights and zero biases, every LayerNorm weight 1 and
bias 0. The truncation bounds are the reference's absolute [-2, 2], i.e. about 100 std at
std 0.02, so in practice a plain normal. The reference ViT constructors also divide each
block's attn.proj and mlp.fc2 weights by sqrt(2 * layer_id), but its training helper then
re-initialises every Linear, so that rescale never reaches training: here it is opt-in.
"""

import math
from collections.abc import Iterable

import torch
from torch import nn

from ijepa_ds.models.layers import Block

TRUNC_BOUNDS = (-2.0, 2.0)


def trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """In-place normal(0, std) draw truncated to the reference's absolute bounds [-2, 2]."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=TRUNC_BOUNDS[0], b=TRUNC_BOUNDS[1])


@torch.no_grad()
def init_reference_weights(module: nn.Module, init_std: float = 0.02) -> None:
    """Apply the reference init to every Linear, Conv2d and LayerNorm inside `module`.

    Parameters of other kinds (position tables, the mask token) are left to their owner.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@torch.no_grad()
def rescale_residual_init(blocks: Iterable[Block]) -> None:
    """Divide block l's (1-based) attn.proj and mlp.fc2 weights by sqrt(2 * l), in place.

    The per-depth rescale of the reference ViT constructors, so the residual stream's
    variance grows more slowly with depth.
    """
    for layer_id, block in enumerate(blocks, start=1):
        factor = math.sqrt(2.0 * layer_id)
        block.attn.proj.weight.div_(factor)
        block.mlp.fc2.weight.div_(factor)
