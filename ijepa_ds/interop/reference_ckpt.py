"""Read checkpoints written by the reference I-JEPA code (facebookresearch/ijepa).

The reference `save_checkpoint` writes a `torch.save` dict: `encoder`, `predictor`,
`target_encoder` (DDP state dicts, keys prefixed `module.`), `opt` (AdamW state, 4 groups),
`scaler` (GradScaler state or None), `epoch`, `loss`, `batch_size`, `world_size`, `lr`.
Files are read with `weights_only=True`: tensors and plain containers only, so a file that
would run code when unpickled is refused instead of executed.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ijepa_ds.fileio import safe_torch_load

MODEL_KEYS = ("encoder", "predictor", "target_encoder")
METADATA_KEYS = ("epoch", "loss", "batch_size", "world_size", "lr")
DDP_PREFIX = "module."


class ReferenceCheckpointError(ValueError):
    """A file that cannot be read as a reference checkpoint; the message names the file."""


@dataclass
class ReferenceCheckpoint:
    """Contents of a reference checkpoint, model keys without the `module.` prefix."""

    path: Path
    encoder: dict[str, torch.Tensor]
    predictor: dict[str, torch.Tensor]
    target_encoder: dict[str, torch.Tensor]
    opt: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    # epoch, loss, batch_size, world_size, lr: whichever the file holds.
    metadata: dict[str, Any] = field(default_factory=dict)


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the leading DDP `module.` from every key that has one."""
    return {k.removeprefix(DDP_PREFIX): v for k, v in state_dict.items()}


def _load_safely(path: Path) -> Any:
    return safe_torch_load(path, "reference checkpoint", error=ReferenceCheckpointError)


def _state_dict(path: Path, payload: Mapping[str, Any], key: str) -> dict[str, torch.Tensor]:
    value = payload[key]
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise ReferenceCheckpointError(f"{path}: '{key}' is not a state dict of tensors")
    return strip_module_prefix(value)


def load_reference_checkpoint(path: str | Path) -> ReferenceCheckpoint:
    """Read a reference checkpoint on CPU without executing anything from the file.

    Raises:
        FileNotFoundError: no file at path.
        ReferenceCheckpointError: truncated or corrupt, needs arbitrary unpickling, or not a
            reference checkpoint (not a dict, or missing encoder/predictor/target_encoder).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    payload = _load_safely(path)
    if not isinstance(payload, Mapping):
        raise ReferenceCheckpointError(
            f"{path}: not a reference checkpoint (top level is {type(payload).__name__}, "
            f"expected a dict)"
        )
    missing = [k for k in MODEL_KEYS if k not in payload]
    if missing:
        raise ReferenceCheckpointError(
            f"{path}: not a reference checkpoint: missing {missing} (keys: {sorted(payload)})"
        )
    return ReferenceCheckpoint(
        path=path,
        encoder=_state_dict(path, payload, "encoder"),
        predictor=_state_dict(path, payload, "predictor"),
        target_encoder=_state_dict(path, payload, "target_encoder"),
        opt=payload.get("opt"),
        scaler=payload.get("scaler"),
        metadata={k: payload[k] for k in METADATA_KEYS if k in payload},
    )
