"""Interoperability with checkpoints of the reference I-JEPA implementation."""

from ijepa_ds.interop.reference_ckpt import (
    ReferenceCheckpoint,
    ReferenceCheckpointError,
    load_reference_checkpoint,
    strip_module_prefix,
)

__all__ = [
    "ReferenceCheckpoint",
    "ReferenceCheckpointError",
    "load_reference_checkpoint",
    "strip_module_prefix",
]

# Checkpoint conversion: DeepSpeed run -> consolidated fp32 file <-> reference .pth.tar / timm.
from ijepa_ds.interop.arch import infer_encoder_kwargs, infer_predictor_kwargs  # noqa: E402
from ijepa_ds.interop.consolidated import (  # noqa: E402
    ConsolidatedError,
    build_models,
    load_consolidated,
    make_consolidated,
    save_consolidated,
)
from ijepa_ds.interop.from_deepspeed import consolidate_deepspeed  # noqa: E402
from ijepa_ds.interop.reference_export import (  # noqa: E402
    from_reference,
    save_reference,
    to_reference,
)
from ijepa_ds.interop.timm_export import build_timm_model, export_timm  # noqa: E402

__all__ += [
    "ConsolidatedError",
    "build_models",
    "build_timm_model",
    "consolidate_deepspeed",
    "export_timm",
    "from_reference",
    "infer_encoder_kwargs",
    "infer_predictor_kwargs",
    "load_consolidated",
    "make_consolidated",
    "save_consolidated",
    "save_reference",
    "to_reference",
]
