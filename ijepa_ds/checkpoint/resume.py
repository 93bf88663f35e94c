"""Find the checkpoint to resume from and load it into a built trainer, exactly."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ijepa_ds.backend.ds_config import zero_stage
from ijepa_ds.checkpoint.layout import (
    ENGINE_TAG,
    STATE_FILE,
    TARGET_FILE,
    complete_checkpoints,
    is_complete,
    read_latest,
)
from ijepa_ds.checkpoint.state import TrainState, restore_rng
from ijepa_ds.checkpoint.verify import (
    CheckpointError,
    check_same_model,
    load_target_state_dict,
    load_train_state,
    safe_load,
    verify_readable,
)
from ijepa_ds.observability import get_logger

__all__ = ["CheckpointError", "agree_on_resume", "load_checkpoint", "resolve_resume", "safe_load"]
log = get_logger(__name__)


def _candidates(run_dir: Path, fallback: bool) -> list[Path]:
    """Complete checkpoints, newest first, the ``latest`` pointer's folder leading."""
    folders = list(reversed(complete_checkpoints(run_dir)))
    latest = read_latest(run_dir)
    if latest is not None:
        if not is_complete(latest):
            problem = (
                f"{run_dir}/checkpoints/latest names {latest.name}, which is missing or has no "
                "COMPLETE marker"
            )
            if not fallback:
                raise CheckpointError(
                    f"{problem}; pass --resume-fallback to resume from the newest complete "
                    "checkpoint instead"
                )
            log.warning("%s: falling back to the newest complete checkpoint", problem)
            return folders
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
        verify_readable(folder)
        return folder
    candidates = _candidates(Path(run_dir), fallback)
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


def agree_on_resume(
    run_dir: str | Path, resume: str, fallback: bool, cfg, rank: int
) -> Path | None:
    """``resolve_resume`` on rank 0, its answer (a folder, None or the error) on every rank.

    One rank reads and checks the files, so ranks never disagree on the checkpoint (or on
    falling back), and an unusable checkpoint stops every rank with the same message before
    any rank waits on another. The checkpoint must hold the model ``cfg`` builds.
    """
    choice: list = [None, None]
    if rank == 0:
        try:
            folder = resolve_resume(run_dir, resume, fallback)
            if folder is not None:
                check_same_model(folder, load_train_state(folder), cfg)
            choice = [None if folder is None else str(folder), None]
        except (ValueError, OSError) as err:
            choice = [None, str(err)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    if choice[1] is not None:
        raise CheckpointError(choice[1])
    return None if choice[0] is None else Path(choice[0])


def load_target(trainer, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Copy a full fp32 target state dict into the (possibly partitioned) target encoder."""
    params = dict(trainer.target.module.named_parameters())
    if trainer.target.partitioned and (set(state_dict) ^ set(params)):
        raise CheckpointError(f"{source}: target encoder keys do not match the model")
    trainer.target.load_full_state_dict(state_dict, trainer.dist_env.rank)


def prepare_resume(folder: Path, dist_env, ds_config: dict) -> None:
    """Before the engine exists: switch to a universal load when world size or stage changed."""
    from ijepa_ds.checkpoint.elastic import (
        enable_universal_load,
        needs_universal,
        prepare_universal,
    )

    state, stage = load_train_state(folder), zero_stage(ds_config)
    if needs_universal(state, dist_env.world_size, stage):
        if state.zero_stage == 0:
            raise CheckpointError(
                f"{folder / ENGINE_TAG} was written at ZeRO 0, which DeepSpeed's universal "
                f"conversion cannot read (no ZeRO optimizer shards), so it cannot be resumed at "
                f"ZeRO {stage}: resume it with deepspeed.config=zero0 (any number of ranks)"
            )
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
        if not trainer.engine.load(str(folder), ENGINE_TAG):
            raise CheckpointError(f"DeepSpeed could not load {folder / ENGINE_TAG}")
        if state.world_size == trainer.dist_env.world_size:  # ZeRO 0 loads on any world size
            restore_rng(state.rng[trainer.dist_env.rank])
    load_target(trainer, load_target_state_dict(folder), folder / TARGET_FILE)
    log.info("resumed from %s at step %d (epoch %d)", folder, state.step, state.epoch)
    return state
