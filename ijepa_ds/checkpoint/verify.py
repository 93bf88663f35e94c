"""Check a checkpoint before anything loads it for real.

Every error is a ``CheckpointError`` naming the file and what is wrong with it:

- our own files (``train_state.pt``, ``target_encoder.pt``) load with ``weights_only=True`` and
  hold what they should;
- the DeepSpeed shards the saving world size implies are all there, and each one is read
  first with ``weights_only=True`` and an allowlist of DeepSpeed's own plain classes
  (``backend.zero_files.load_ds_file``): DeepSpeed's loader unpickles them without that
  check, so a file that would run code, or a truncated one, is refused before it gets the
  chance;
- the checkpoint holds the model this run builds (encoder and predictor dimensions).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ijepa_ds.checkpoint.layout import ENGINE_TAG, STATE_FILE, TARGET_FILE
from ijepa_ds.checkpoint.state import TrainState
from ijepa_ds.fileio import safe_torch_load

_RANK_RE = re.compile(r"zero_pp_rank_(\d+)_")


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used; the message names the file and the problem."""


def safe_load(path: Path, mmap: bool = False) -> dict:
    """``fileio.safe_torch_load`` of a checkpoint part, raising ``CheckpointError``."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return safe_torch_load(path, "checkpoint file", mmap=mmap, error=CheckpointError)


def load_train_state(folder: Path) -> TrainState:
    try:
        return TrainState.from_state_dict(safe_load(folder / STATE_FILE))
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder / STATE_FILE}: {err}") from err


def load_target_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The fp32 target encoder weights of ``target_encoder.pt`` (memory-mapped: at ViT-H size
    a resume on W ranks would otherwise read 2.5 GB into each of them)."""
    path = folder / TARGET_FILE
    saved = safe_load(path, mmap=True)
    weights = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise CheckpointError(f"{path} holds no {{'state_dict': {{name: tensor}}}} mapping")
    return weights


def model_arch(cfg) -> dict:
    """Encoder and predictor constructor numbers of the model ``cfg`` trains (plain data)."""
    from ijepa_ds.models.from_config import (
        encoder_kwargs_from_config,
        predictor_kwargs_from_config,
    )

    def plain(kwargs: dict) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}

    return {
        "encoder": plain(encoder_kwargs_from_config(cfg)),
        "predictor": plain(predictor_kwargs_from_config(cfg)),
    }


def check_same_model(folder: Path, state: TrainState, cfg) -> None:
    """Refuse a checkpoint of another model, naming every dimension that differs."""
    if not state.model:
        return  # written before the architecture was recorded: DeepSpeed's strict load checks
    ours = model_arch(cfg)
    diffs = [
        f"{part}.{key}: checkpoint {state.model.get(part, {}).get(key)!r}, this run {value!r}"
        for part, kwargs in ours.items()
        for key, value in kwargs.items()
        if state.model.get(part, {}).get(key) != value
    ]
    if diffs:
        raise CheckpointError(
            f"{folder / STATE_FILE} is a checkpoint of another model ({'; '.join(diffs)}): "
            "resume with the model settings it was trained with"
        )


def _require_ranks(engine: Path, pattern: str, world_size: int, what: str) -> list[Path]:
    """The files of ``pattern``, one per rank 0 .. world_size - 1, else a CheckpointError."""
    files = sorted(engine.glob(pattern))
    ranks = {int(m.group(1)) for p in files if (m := _RANK_RE.search(p.name))}
    missing = sorted(set(range(world_size)) - ranks)
    if missing:
        raise CheckpointError(
            f"{engine} lacks the {what} of rank(s) {missing} ({pattern}); it was written by "
            f"{world_size} ranks"
        )
    return files


def engine_files(folder: Path, state: TrainState) -> list[Path]:
    """Every DeepSpeed file of the checkpoint, after checking none of the expected is missing."""
    engine = folder / ENGINE_TAG
    if not engine.is_dir():
        raise CheckpointError(f"{engine} is missing")
    world = state.world_size
    if state.zero_stage == 3:
        files = _require_ranks(engine, "zero_pp_rank_*_model_states.pt", world, "model states")
    else:
        files = [engine / "mp_rank_00_model_states.pt"]
        if not files[0].is_file():
            raise CheckpointError(f"{files[0]} is missing")
    optim = sorted(engine.glob("*zero_pp_rank_*_optim_states.pt"))
    if optim or state.zero_stage > 0:  # ZeRO 0 keeps the optimizer in the model file (fp32)
        optim = _require_ranks(engine, "*zero_pp_rank_*_optim_states.pt", world, "optimizer")
    return files + optim


def check_deepspeed_file(path: Path) -> None:
    """Read ``path`` as plain data (weights_only, DeepSpeed's allowlist) or raise naming it."""
    from ijepa_ds.backend.zero_files import load_ds_file

    load_ds_file(path, CheckpointError)


def check_engine_files(folder: Path, state: TrainState) -> None:
    """All expected shards present, each readable as plain data (see the module docstring)."""
    for path in engine_files(folder, state):
        check_deepspeed_file(path)


def check_universal_files(universal: Path) -> None:
    """Every file of a universal checkpoint folder (elastic resume) read as plain data first:
    DeepSpeed's universal loader unpickles them unchecked too."""
    for path in sorted(universal.rglob("*.pt")):
        check_deepspeed_file(path)


def verify_readable(folder: Path) -> TrainState:
    """Every file of ``folder`` present and loadable as plain data; returns its train state."""
    state = load_train_state(folder)
    load_target_state_dict(folder)
    check_engine_files(folder, state)
    return state
