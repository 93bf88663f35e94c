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
