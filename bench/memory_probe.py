"""Measure what one rank holds during a real training step on CPU (for plan_validation).

Three measurements, none of them a model:
- ``held_bytes``: every tensor reachable from Python (``gc.get_objects()``), deduplicated by
  storage, each storage assigned to the first category that owns it: engine parameters,
  optimizer moments (the torch AdamW state), fp32 master weights, gradients (``.grad`` of
  parameters and masters, DeepSpeed's gradient partitions and reduce buckets), target
  encoder; the rest is "other" (data, masks, ...).
- ``SavedTensors``: bytes of the distinct storages autograd saves for backward during the
  forward (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded: the
  activation memory at the end of the forward.
- ``allocation_peak``: the running sum of the CPU allocator's allocation and free events
  recorded by ``torch.profiler`` (``profile_memory=True``): the peak of live bytes above the
  level at the start of the profiled region, temporaries included.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

import torch
from torch.profiler import ProfilerActivity, profile

MASTER_ATTRS = (
    "single_partition_of_fp32_groups",
    "fp32_partitioned_groups_flat",
    "fp32_groups",
    "fp32_groups_flat",
)
LP_PARAM_ATTRS = ("bit16_groups_flat", "fp16_partitioned_groups_flat", "lp_param_buffer")


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    if t.device.type == "meta":
        return None
    st = t.untyped_storage()
    return (st.data_ptr(), st.nbytes()) if st.nbytes() > 0 else None


def _tensors(obj, depth: int = 3) -> Iterable[torch.Tensor]:
    """Tensors inside nested lists/tuples/dicts (and the .grad of those tensors)."""
    if torch.is_tensor(obj):
        yield obj
        if obj.grad is not None:
            yield obj.grad
    elif depth > 0 and isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, depth - 1)
    elif depth > 0 and isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value, depth - 1)


def _param_tensors(module: torch.nn.Module) -> Iterable[torch.Tensor]:
    for p in module.parameters():
        yield p.data
        if hasattr(p, "ds_tensor"):
            yield p.ds_tensor


def _grad_tensors(engine) -> Iterable[torch.Tensor]:
    for p in engine.module.parameters():
        if p.grad is not None:
            yield p.grad
    opt = engine.optimizer
    for name, value in vars(opt).items():
        if "grad" in name.lower() or name == "ipg_buckets":
            yield from _tensors(value)
        if name == "ipg_buckets":
            for bucket in value.values():
                yield from _tensors(getattr(bucket, "buffer", None))
    for name in MASTER_ATTRS:
        for t in _tensors(getattr(opt, name, None)):
            if t.grad is not None:
                yield t.grad


def _moment_tensors(engine) -> Iterable[torch.Tensor]:
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        yield from _tensors(state)


def _categories(engine, target) -> list[tuple[str, Iterable[torch.Tensor]]]:
    opt = engine.optimizer
    lp = [t for name in LP_PARAM_ATTRS for t in _tensors(getattr(opt, name, None))]
    master = [t for name in MASTER_ATTRS for t in _tensors(getattr(opt, name, None), 2)]
    return [
        ("params", list(_param_tensors(engine.module)) + lp),
        ("moments", _moment_tensors(engine)),
        ("master", [t for t in master if t.requires_grad or t.dtype == torch.float32]),
        ("grads", _grad_tensors(engine)),
        ("target", _param_tensors(target.module)),
    ]


def held_bytes(engine, target) -> dict[str, int]:
    """Bytes per category of the storages this process holds (module docstring)."""
    owner: dict[tuple[int, int], str] = {}
    for category, tensors in _categories(engine, target):
        for t in tensors:
            key = _storage_key(t)
            if key is not None and key not in owner:
                owner[key] = category
    gc.collect()
    every = set()
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj):
                key = _storage_key(obj)
                if key is not None:
                    every.add(key)
        except (ReferenceError, RuntimeError):
            continue
    totals = {name: 0 for name, _ in _categories(engine, target)}
    totals["other"] = 0
    for key in every | set(owner):
        totals[owner.get(key, "other")] += key[1]
    return totals


class SavedTensors:
    """Context manager: bytes of distinct non-parameter storages saved for backward."""

    def __init__(self, modules: Iterable[torch.nn.Module]):
        self.params = [p for m in modules for p in m.parameters()]
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is None or key[0] in self.storages:
            return t
        # Parameters (and the gathered ZeRO-3 copies behind them) are model states.
        if any(p.data_ptr() == key[0] for p in self.params):
            return t
        self.storages[key[0]] = key[1]
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def allocation_peak(fn) -> tuple[int, int, object]:
    """Run ``fn()`` under the profiler: (peak live bytes above the start, net bytes, result)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak, running, result
