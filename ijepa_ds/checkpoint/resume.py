"""Find the checkpoint to resume from and load it into a built trainer, exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from ijepa_ds.checkpoint.layout import (
    ENGINE_TAG,
    STATE_FILE,
    TARGET_FILE,
    complete_checkpoints,
    is_complete,
    read_latest,
)
from ijepa_ds.checkpoint.state import TrainState, restore_rng
from ijepa_ds.observability import get_logger

log = get_logger(__name__)


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used; the message names the file and the problem."""


def safe_load(path: Path) -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file and what is wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"{path} needs arbitrary unpickling, which ijepa-ds refuses (it can run code); "
                "only checkpoints of plain tensors and containers are loaded"
            ) from err
        raise CheckpointError(f"{path} cannot be read (truncated or corrupt?): {text}") from err


def _candidates(run_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first, the ``latest`` pointer's folder leading."""
    folders = list(reversed(complete_checkpoints(run_dir)))
    latest = read_latest(run_dir)
    if latest is not None:
        if not is_complete(latest):
            raise CheckpointError(
                f"{run_dir}/checkpoints/latest names {latest.name}, which is missing or has no "
                "COMPLETE marker"
            )
        folders = [latest] + [f for f in folders if f != latest]
    return folders


def resolve_resume(run_dir: str | Path, resume: str, fallback: bool = False) -> Path | None:
    """``resume``: "" (fresh run), "auto" (newest complete checkpoint of ``run_dir`` if any) or
    a step folder. With ``fallback`` an unreadable newest checkpoint gives way to the previous
    complete one (logged); without it, it is an error. Returns the folder or None.
    """
    if not resume:
        return None
    if resume != "auto":
        folder = Path(resume)
        if not is_complete(folder):
            raise CheckpointError(f"--resume {folder}: not a complete checkpoint folder")
        return folder
    candidates = _candidates(Path(run_dir))
    if not candidates:
        log.info("--resume auto: no complete checkpoint in %s, starting at step 0", run_dir)
        return None
    for folder in candidates:
        try:
            verify_readable(folder)
            return folder
        except CheckpointError as err:
            if not fallback:
                raise CheckpointError(
                    f"{err}; pass --resume-fallback to resume from the previous complete "
                    "checkpoint instead"
                ) from err
            log.warning("skipping unreadable checkpoint %s: %s", folder, err)
    raise CheckpointError(f"no readable complete checkpoint in {run_dir}/checkpoints")


def verify_readable(folder: Path) -> None:
    """Cheap check that the small files load and that the engine shards are all there."""
    safe_load(folder / STATE_FILE)
    safe_load(folder / TARGET_FILE)
    engine = folder / ENGINE_TAG
    if not engine.is_dir() or not any(engine.iterdir()):
        raise CheckpointError(f"{engine} is missing or empty")


def load_train_state(folder: Path) -> TrainState:
    try:
        return TrainState.from_state_dict(safe_load(folder / STATE_FILE))
    except ValueError as err:
        raise CheckpointError(f"{folder / STATE_FILE}: {err}") from err


def load_target(trainer, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Copy a full fp32 target state dict into the (possibly partitioned) target encoder."""
    module = trainer.target.module
    if not trainer.target.partitioned:
        module.load_state_dict(state_dict, strict=True)
        return
    import deepspeed

    params = dict(module.named_parameters())
    unknown = set(state_dict) - set(params)
    if unknown or set(params) - set(state_dict):
        raise CheckpointError(f"{source}: target encoder keys do not match the model")
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
        if trainer.dist_env.rank == 0:
            for name, param in params.items():
                param.data.copy_(state_dict[name])


def prepare_resume(folder: Path, dist_env, ds_config: dict) -> None:
    """Before the engine exists: switch to a universal load when world size or stage changed."""
    from ijepa_ds.checkpoint.elastic import (
        enable_universal_load,
        needs_universal,
        prepare_universal,
    )
    from ijepa_ds.train.ds_config import zero_stage

    state = load_train_state(folder)
    if needs_universal(state, dist_env.world_size, zero_stage(ds_config)):
        prepare_universal(folder, dist_env.rank)
        enable_universal_load(ds_config)


def load_checkpoint(trainer, folder: Path) -> TrainState:
    """Restore engine (weights, optimizer, counters), target, and this rank's RNG."""
    state = load_train_state(folder)
    if state.global_batch_size != trainer.global_batch_size:
        raise CheckpointError(
            f"{folder / STATE_FILE} was written with global batch {state.global_batch_size}, this "
            f"run has {trainer.global_batch_size}: set data.global_batch_size="
            f"{state.global_batch_size} (gradient accumulation adapts to the world size)"
        )
    if trainer.ds_config.get("checkpoint", {}).get("load_universal"):
        from ijepa_ds.checkpoint.elastic import load_elastic

        load_elastic(trainer, folder, state)
    else:
        path, _ = trainer.engine.load_checkpoint(
            str(folder), tag=ENGINE_TAG, load_lr_scheduler_states=False
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {folder / ENGINE_TAG}")
        restore_rng(state.rng[trainer.dist_env.rank])
    target = safe_load(folder / TARGET_FILE)
    load_target(trainer, target["state_dict"], folder / TARGET_FILE)
    log.info("resumed from %s at step %d (epoch %d)", folder, state.step, state.epoch)
    return state
