"""ZeRO-3 partitioning and gathering, and the fp32 masters of the engine's parameters.

What the EMA target needs from DeepSpeed: partition a module like the student, gather one unit
of it at a time (its forward, its save and load), and find each student parameter's fp32 value
(the parameter itself, the optimizer's master, or this rank's shard of it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

UnitParams = Sequence[tuple[nn.Module, list[nn.Parameter]]]


def partition_module(module: nn.Module) -> None:
    """Partition ``module``'s existing fp32 parameters over the ranks, in place (ZeRO-3).

    ``mem_efficient_linear=False`` keeps ``torch.nn.functional.linear`` unpatched for the
    whole process (DeepSpeed would otherwise swap it for its own autograd function).
    """
    import deepspeed

    deepspeed.zero.Init(module=module, mem_efficient_linear=False)


@contextmanager
def gathered(params: list[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """The full values of partitioned ``params`` inside the block (collective).

    ``modifier_rank``: the rank whose in-place changes are re-partitioned on exit (None: the
    values are read only).
    """
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def register_gather_hooks(units: UnitParams) -> None:
    """Gather each unit's parameters for the length of its forward, then release them.

    units: (module, its parameters) pairs; a gathered unit is freed before the next one is
    gathered, so a forward holds one unit (one transformer block) in full at a time.
    """
    import deepspeed

    for unit, params in units:

        def pre_hook(mod, args, params=params):
            ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
            ctx.__enter__()
            mod._ijepa_gathered = ctx

        def post_hook(mod, args, output):
            mod._ijepa_gathered.__exit__(None, None, None)
            del mod._ijepa_gathered

        unit.register_forward_pre_hook(pre_hook)
        unit.register_forward_hook(post_hook)


def local_partition(param: nn.Parameter) -> torch.Tensor:
    """This rank's flat shard of a ZeRO-3 parameter (DeepSpeed's ``ds_tensor`` attribute)."""
    return param.ds_tensor


def flat_fp32_master_views(optimizer) -> dict[int, torch.Tensor]:
    """id(low-precision param) -> its fp32 master in DeepSpeed's fp16-style optimizer wrappers.

    bf16 without ZeRO uses DeepSpeed's FP16_(Unfused)Optimizer: fp32 masters per group, either
    one unpadded flat tensor (private ``fp32_groups_flat``) or one tensor per parameter
    (``fp32_groups``), both aligned with ``fp16_groups``, and no per-parameter mapping that
    ``safe_get_full_fp32_param`` could use. ZeRO optimizers give an empty dict here and are
    served by ``safe_get_*_fp32_param``.
    """
    lp_groups = getattr(optimizer, "fp16_groups", None)
    if lp_groups is None:
        return {}
    views: dict[int, torch.Tensor] = {}
    if hasattr(optimizer, "fp32_groups_flat"):
        for params, flat in zip(lp_groups, optimizer.fp32_groups_flat):
            offset = 0
            for p in params:
                views[id(p)] = flat.data[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    elif hasattr(optimizer, "fp32_groups"):
        for params, masters in zip(lp_groups, optimizer.fp32_groups):
            views.update((id(p), m.data) for p, m in zip(params, masters))
    return views


def fp32_source(
    param: nn.Parameter, partitioned: bool, flat_masters: dict[int, torch.Tensor]
) -> torch.Tensor:
    """The fp32 value the EMA reads for student ``param``.

    partitioned (ZeRO-3): this rank's flat fp32 shard [numel / W (+ padding)]; otherwise the
    full fp32 value shaped like ``param``: the parameter itself in fp32, else its master.
    """
    if not partitioned and param.dtype == torch.float32:
        return param.data
    if not partitioned and id(param) in flat_masters:
        return flat_masters[id(param)]
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_local_fp32_param

    if partitioned:
        return safe_get_local_fp32_param(param).view(-1)
    fp32 = safe_get_full_fp32_param(param)
    if fp32 is None:
        raise RuntimeError(f"no fp32 master weight found for a {param.dtype} student parameter")
    return fp32
