"""Activation checkpointing of transformer blocks (``apply_*``: an in-place model transform).

Two implementations:
- ``torch``: ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` (default).
- ``deepspeed``: ``deepspeed.checkpointing.checkpoint``, which can keep the saved block inputs
  on the CPU (``model.act_ckpt_cpu_offload``); it only does so once
  ``deepspeed.checkpointing.configure`` has run (see :func:`configure_deepspeed_checkpointing`).

fairscale's ``checkpoint_wrapper`` is not offered: with the torch implementation it adds only
activation offload to the CPU, which DeepSpeed's implementation already provides.

The block's ``forward`` is replaced on the instance, so module names and state-dict keys stay
exactly the reference ones (``blocks.3.attn.qkv.weight``), which wrapper modules would change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

IMPLS = ("torch", "deepspeed")


def _checkpointed(forward: Callable, impl: str, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """forward(x, **kwargs) with x the only checkpointed input.

    kwargs must hold no tensors (a Block's ``query_from`` int): they are bound into the
    function rather than passed through the checkpoint (``deepspeed.checkpointing.checkpoint``
    takes positional arguments only), so the recomputation in the backward reuses them as is.
    """
    if kwargs:
        forward = functools.partial(forward, **kwargs)
    if not torch.is_grad_enabled():
        return forward(x)
    if impl == "torch":
        return torch_checkpoint(forward, x, use_reentrant=False)
    import deepspeed

    return deepspeed.checkpointing.checkpoint(forward, x)


def apply_activation_checkpointing(blocks: nn.ModuleList, every: int, impl: str = "torch") -> int:
    """Checkpoint blocks 0, k, 2k, ... of ``blocks`` (``every=k``; 0 = none, 1 = all).

    Returns the number of blocks checkpointed.
    """
    if impl not in IMPLS:
        raise ValueError(f"model.act_ckpt_impl={impl!r}: expected one of {IMPLS}")
    if every < 0:
        raise ValueError(f"activation checkpointing interval must be >= 0, got {every}")
    if every == 0:
        return 0
    count = 0
    for index, block in enumerate(blocks):
        if index % every == 0:
            block.forward = functools.partial(_checkpointed, block.forward, impl)
            count += 1
    return count


def configure_deepspeed_checkpointing(cpu_offload: bool) -> None:
    """Configure DeepSpeed's checkpointing (CPU offload of the saved block inputs or not).

    Without a ``configure`` call DeepSpeed ignores the ``activation_checkpointing`` config
    section silently (REFERENCE.md section 5), so the trainer always makes this call.
    """
    import deepspeed

    deepspeed.checkpointing.configure(
        mpu_=None,
        partition_activations=False,
        contiguous_checkpointing=False,
        checkpoint_in_cpu=cpu_offload,
        synchronize=False,
        profile=False,
    )
