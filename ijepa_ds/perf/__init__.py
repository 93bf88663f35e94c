"""Performance models: FLOPs and MFU of a training step, per-rank memory, the memory planner.

Pure arithmetic on shapes (no model is built): ``flops`` (``step_flops``, ``mfu``), ``memory``
(``estimate_memory``) and ``plan`` (``plan``, ``format_plan``, used by ``ijepa-ds plan``).
"""

from ijepa_ds.perf.flops import StepFlops, StepShape, TransformerShape, mfu, step_flops
from ijepa_ds.perf.memory import (
    ActivationSettings,
    EngineSettings,
    MemoryEstimate,
    estimate_memory,
    param_counts,
)

__all__ = [
    "ActivationSettings",
    "EngineSettings",
    "MemoryEstimate",
    "StepFlops",
    "StepShape",
    "TransformerShape",
    "estimate_memory",
    "mfu",
    "param_counts",
    "step_flops",
]
