"""Activation checkpointing of transformer blocks (``apply_*``: an in-place model transform).

Three implementations; each keeps only the block's input [B, N, D] for the backward, which
recomputes the block, and each can keep that input in host memory instead of on the
accelerator (``cpu_offload``, ``model.act_ckpt_cpu_offload``):
- ``torch``: ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` (default). Offload runs
  the call under ``torch.autograd.graph.save_on_cpu``: the checkpoint saves its inputs as
  autograd saved tensors, so exactly the block input goes through the hook (pinned memory,
  asynchronous copies); everything inside the block is recomputed, not saved.
- ``deepspeed``: ``deepspeed.checkpointing.checkpoint``; its offload (``checkpoint_in_cpu``)
  is set process-wide by ``deepspeed.checkpointing.configure``, which
  :func:`apply_activation_checkpointing` calls. It needs a GPU: on a CPU device the copy it
  keeps shares storage with the input it frees, and the backward fails.
- ``fairscale``: the checkpoint fairscale's ``checkpoint_wrapper`` installs (optional
  package, ``pip install .[fairscale]``), with its ``offload_to_cpu``.

On a CPU device offloading to the CPU is a no-op: the tensors already live in host memory.

The block's ``forward`` is replaced on the instance, so module names and state-dict keys stay
exactly the reference ones (``blocks.3.attn.qkv.weight``), which wrapper modules would change.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import save_on_cpu
from torch.utils.checkpoint import checkpoint as torch_checkpoint

IMPLS = ("torch", "deepspeed", "fairscale")


def _fairscale(forward: Callable, module: nn.Module, cpu_offload: bool, x: torch.Tensor):
    """fairscale's checkpoint of ``forward(x)``: the function ``checkpoint_wrapper(module)``
    installs as ``module.forward`` (private in fairscale 0.4.13; the extra pins < 0.5).

    ``checkpoint_wrapper`` itself binds it to a weak reference of the module, so a deep copy of
    a checkpointed model would run the original's weights; the forward that
    :func:`apply_activation_checkpointing` installs holds the module itself. fairscale reads
    ``module.parameters()`` to decide whether the output needs a gradient.
    """
    from fairscale.nn.checkpoint.checkpoint_activations import _checkpointed_forward

    return _checkpointed_forward(lambda _module, t: forward(t), lambda: module, cpu_offload, x)


def _checkpointed(
    forward: Callable,
    module: nn.Module,
    impl: str,
    cpu_offload: bool,
    x: torch.Tensor,
    **kwargs: Any,
) -> torch.Tensor:
    """forward(x, **kwargs) with x [B, N, D] the only checkpointed input.

    kwargs must hold no tensors that need a gradient (a Block's ``query_from`` int, its bool
    ``key_mask``): they are bound into the function rather than passed through the checkpoint
    (``deepspeed.checkpointing.checkpoint`` takes positional arguments only), so the
    recomputation in the backward reuses them as is.
    """
    if kwargs:
        forward = functools.partial(forward, **kwargs)
    if not torch.is_grad_enabled():
        return forward(x)
    if impl == "fairscale":
        return _fairscale(forward, module, cpu_offload, x)
    if impl == "deepspeed":
        import deepspeed

        return deepspeed.checkpointing.checkpoint(forward, x)
    offload = save_on_cpu(pin_memory=x.is_cuda) if cpu_offload else contextlib.nullcontext()
    with offload:
        return torch_checkpoint(forward, x, use_reentrant=False)


def _check_impl(impl: str, cpu_offload: bool) -> None:
    if impl not in IMPLS:
        raise ValueError(f"model.act_ckpt_impl={impl!r}: expected one of {IMPLS}")
    if impl == "deepspeed" and cpu_offload:
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() == "cpu":
            raise ValueError(
                "model.act_ckpt_cpu_offload=true with model.act_ckpt_impl='deepspeed' needs a "
                "GPU: on a CPU device DeepSpeed's offloaded copy shares storage with the "
                "activation it frees (act_ckpt_impl torch or fairscale offload anywhere)"
            )


def apply_activation_checkpointing(
    blocks: nn.ModuleList, every: int, impl: str = "torch", cpu_offload: bool = False
) -> int:
    """Checkpoint blocks 0, k, 2k, ... of ``blocks`` (``every=k``; 0 = none, 1 = all).

    ``cpu_offload`` keeps each checkpointed block's input in host memory until the backward.
    For ``deepspeed`` it is process-wide: the last call's value holds for every block.
    Returns the number of blocks checkpointed.
    """
    _check_impl(impl, cpu_offload)
    if every < 0:
        raise ValueError(f"activation checkpointing interval must be >= 0, got {every}")
    if every == 0:
        return 0
    chosen = [index for index in range(len(blocks)) if index % every == 0]
    for index in chosen:
        if "forward" in vars(blocks[index]):
            raise ValueError(f"block {index} is checkpointed already")
    if impl == "deepspeed":
        configure_deepspeed_checkpointing(cpu_offload)
    for index in chosen:
        block = blocks[index]
        block.forward = functools.partial(_checkpointed, block.forward, block, impl, cpu_offload)
    return len(chosen)


def configure_deepspeed_checkpointing(cpu_offload: bool) -> None:
    """Configure DeepSpeed's checkpointing (CPU offload of the saved block inputs or not).

    Without a ``configure`` call DeepSpeed ignores the ``activation_checkpointing`` config
    section silently (docs/reference.md section 5), so :func:`apply_activation_checkpointing` makes
    this call whenever it checkpoints with ``deepspeed``.
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
