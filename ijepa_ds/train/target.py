"""The EMA target encoder, kept in fp32 outside the DeepSpeed engine.

Why outside: the engine casts its module to bf16, where EMA increments of ~(1 - 0.996) x
update round away and the target freezes. Layouts:

- ZeRO 0-2: a replicated fp32 copy. The EMA source is the engine's fp32 view of each student
  parameter: the module parameter itself in fp32 runs, the optimizer's fp32 master in bf16 runs.
- ZeRO 3: partitioned like the student (``zero.Init(module=...)``), so each rank holds 1/W of
  it. The EMA runs on the local fp32 shard against the optimizer's local fp32 shard of the same
  parameter (same partitioning, no communication). The forward gathers one block at a time,
  so it always reads the freshly updated shards.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _gather_units(module: nn.Module) -> list[tuple[nn.Module, bool]]:
    """(unit, recurse) pairs whose parameters are gathered together during the forward.

    The root's own parameters (``pos_embed``), each child, and each element of a ModuleList
    (one transformer block at a time keeps the peak at one block, not the whole model).
    """
    units: list[tuple[nn.Module, bool]] = [(module, False)]
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            units.extend((block, True) for block in child)
        else:
            units.append((child, True))
    return units


def _unit_params(module: nn.Module) -> list[tuple[nn.Module, list[nn.Parameter]]]:
    """(unit, its parameters) for the units of ``_gather_units`` that hold any."""
    pairs = [
        (unit, list(unit.parameters(recurse=recurse))) for unit, recurse in _gather_units(module)
    ]
    return [(unit, params) for unit, params in pairs if params]


def _register_gather_hooks(module: nn.Module) -> None:
    import deepspeed

    for unit, params in _unit_params(module):

        def pre_hook(mod, args, params=params):
            ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
            ctx.__enter__()
            mod._ijepa_gathered = ctx

        def post_hook(mod, args, output):
            mod._ijepa_gathered.__exit__(None, None, None)
            del mod._ijepa_gathered

        unit.register_forward_pre_hook(pre_hook)
        unit.register_forward_hook(post_hook)


def _flat_fp32_master_views(optimizer) -> dict[int, torch.Tensor]:
    """id(low-precision param) -> its fp32 master in DeepSpeed's fp16-style optimizer wrappers.

    bf16 without ZeRO uses DeepSpeed's FP16_(Unfused)Optimizer: fp32 masters per group, either
    one unpadded flat tensor (``fp32_groups_flat``) or one tensor per parameter
    (``fp32_groups``), and no per-parameter mapping that ``safe_get_full_fp32_param`` could
    use. ZeRO optimizers give an empty dict here and are served by ``safe_get_*_fp32_param``.
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


class TargetEncoder:
    """fp32 EMA copy f_theta_bar of the context encoder.

    Args:
        encoder: the student's encoder, still in fp32 and not yet wrapped by DeepSpeed; it is
            deep-copied, so build the target before ``deepspeed.initialize`` and before
            activation checkpointing is applied to the student.
        partitioned: True under ZeRO-3.
    """

    def __init__(self, encoder: nn.Module, partitioned: bool):
        self.module = copy.deepcopy(encoder).float().eval()
        self.module.requires_grad_(False)
        self.partitioned = partitioned
        self._pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        self._flat_masters: dict[int, torch.Tensor] = {}
        if partitioned:
            import deepspeed

            # module= converts the existing fp32 tensors; mem_efficient_linear=False keeps
            # torch.nn.functional.linear unpatched for the whole process (REFERENCE.md s.5).
            deepspeed.zero.Init(module=self.module, mem_efficient_linear=False)
            _register_gather_hooks(self.module)

    def bind(self, student_encoder: nn.Module, optimizer=None) -> None:
        """Pair target and student parameters by name (after the engine wrapped the student).

        ``optimizer`` is the engine's optimizer; its flat fp32 masters are used directly when
        DeepSpeed keeps them without a per-parameter mapping (bf16 without ZeRO).
        """
        student = dict(student_encoder.named_parameters())
        self._pairs = [
            (param, student[name])
            for name, param in self.module.named_parameters()
            if student[name].requires_grad
        ]
        self._flat_masters = _flat_fp32_master_views(optimizer)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [B, C, H, W] -> target features [B, N, D] (fp32 weights)."""
        return self.module(imgs)

    __call__ = forward

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * student, on fp32 values."""
        if not self._pairs:
            raise RuntimeError("TargetEncoder.bind(student_encoder) must be called first")
        targets = [self._target_tensor(t) for t, _ in self._pairs]
        sources = [self._source_tensor(s) for _, s in self._pairs]
        torch._foreach_mul_(targets, momentum)
        torch._foreach_add_(targets, sources, alpha=1.0 - momentum)

    def _target_tensor(self, param: nn.Parameter) -> torch.Tensor:
        return param.ds_tensor if self.partitioned else param.data

    def _source_tensor(self, param: nn.Parameter) -> torch.Tensor:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_local_fp32_param

        if self.partitioned:
            local = safe_get_local_fp32_param(param)
            return local.view(-1)
        if param.dtype == torch.float32:
            return param.data
        if id(param) in self._flat_masters:
            return self._flat_masters[id(param)]
        fp32 = safe_get_full_fp32_param(param)
        if fp32 is None:
            raise RuntimeError(f"no fp32 master weight found for a {param.dtype} student parameter")
        return fp32

    @torch.no_grad()
    def full_state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The full fp32 state dict (cloned), in ``module.state_dict()`` key order.

        Under ZeRO-3 the parameters are gathered one unit (one block) at a time, so beyond what
        it keeps a rank holds one gathered block, never the whole encoder twice. Every rank
        must call it (the gathers are collective); ``keep=False`` takes part and keeps nothing
        (ranks other than the one that writes the file), returning ``{}``.
        """
        module = self.module
        if not self.partitioned:
            return {k: v.detach().clone() for k, v in module.state_dict().items()} if keep else {}
        import deepspeed

        names = {id(p): name for name, p in module.named_parameters()}
        kept: dict[str, torch.Tensor] = {}
        for _, params in _unit_params(module):
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if keep:
                    kept.update((names[id(p)], p.detach().float().clone()) for p in params)
        if not keep:
            return {}
        order = module.state_dict(keep_vars=True)
        return {k: kept[k] if k in kept else v.detach().clone() for k, v in order.items()}

    @torch.no_grad()
    def load_full_state_dict(self, state_dict: dict[str, torch.Tensor], rank: int) -> None:
        """Copy a full fp32 state dict in (keys already checked by the caller).

        Under ZeRO-3 rank 0's values are written one gathered unit at a time and re-partitioned
        (``modifier_rank=0``); the other ranks only take part, so their ``state_dict`` may be a
        memory-mapped file that is never read.
        """
        module = self.module
        if not self.partitioned:
            module.load_state_dict(state_dict, strict=True)
            return
        import deepspeed

        names = {id(p): name for name, p in module.named_parameters()}
        for _, params in _unit_params(module):
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                if rank == 0:
                    for p in params:
                        p.data.copy_(state_dict[names[id(p)]])

    def local_numel(self) -> int:
        """Parameter elements stored on this rank (partition only under ZeRO-3)."""
        return sum(self._target_tensor(p).numel() for p in self.module.parameters())
