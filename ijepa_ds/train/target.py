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

from ijepa_ds.backend.zero3 import (
    fp32_source,
    gathered,
    local_partition,
    partition_module,
    register_gather_hooks,
)


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A host-memory copy of a target tensor, fp32 where it is floating point."""
    dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    return tensor.detach().to("cpu", dtype, copy=True)


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
            partition_module(self.module)
            register_gather_hooks(_unit_params(self.module))

    def bind(
        self, student_encoder: nn.Module, fp32_masters: dict[int, torch.Tensor] | None = None
    ) -> None:
        """Pair target and student parameters by name (after the engine wrapped the student).

        ``fp32_masters``: id(student param) -> its fp32 master, where the engine keeps them
        without a per-parameter mapping (``Engine.fp32_masters``: bf16 without ZeRO); others
        are found through DeepSpeed, and fp32 parameters are read directly.
        """
        student = dict(student_encoder.named_parameters())
        self._pairs = [
            (param, student[name])
            for name, param in self.module.named_parameters()
            if student[name].requires_grad
        ]
        self._flat_masters = dict(fp32_masters or {})

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
        return local_partition(param) if self.partitioned else param.data

    def _source_tensor(self, param: nn.Parameter) -> torch.Tensor:
        return fp32_source(param, self.partitioned, self._flat_masters)

    @torch.no_grad()
    def full_state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The full fp32 state dict, copied to host memory, in ``module.state_dict()`` key order.

        The copy lands in the writer's RAM, never on the accelerator: a GPU rank 0 keeps no
        second target there while the file is written (ViT-G/16: 7.4 GB).

        Under ZeRO-3 the parameters are gathered one unit (one block) at a time, so beyond what
        it keeps a rank holds one gathered block, never the whole encoder twice. Every rank
        must call it (the gathers are collective); ``keep=False`` takes part and keeps nothing
        (ranks other than the one that writes the file), returning ``{}``.
        """
        module = self.module
        if not self.partitioned:
            return {k: _host_copy(v) for k, v in module.state_dict().items()} if keep else {}
        names = {id(p): name for name, p in module.named_parameters()}
        kept: dict[str, torch.Tensor] = {}
        for _, params in _unit_params(module):
            with gathered(params, modifier_rank=None):
                if keep:
                    kept.update((names[id(p)], _host_copy(p)) for p in params)
        if not keep:
            return {}
        order = module.state_dict(keep_vars=True)
        return {k: kept[k] if k in kept else _host_copy(v) for k, v in order.items()}

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
        names = {id(p): name for name, p in module.named_parameters()}
        for _, params in _unit_params(module):
            with gathered(params, modifier_rank=0):
                if rank == 0:
                    for p in params:
                        p.data.copy_(state_dict[names[id(p)]])

    def local_numel(self) -> int:
        """Parameter elements stored on this rank (partition only under ZeRO-3)."""
        return sum(self._target_tensor(p).numel() for p in self.module.parameters())
