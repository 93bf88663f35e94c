"""Collective checkpoint saves: every rank enters together, only a complete folder counts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ijepa_ds.checkpoint.layout import (
    ENGINE_TAG,
    STATE_FILE,
    TARGET_FILE,
    TMP_PREFIX,
    atomic_torch_save,
    checkpoints_dir,
    complete_checkpoints,
    publish,
    step_folder_name,
    step_of,
    write_complete_marker,
)
from ijepa_ds.checkpoint.state import TrainState, capture_rng, versions
from ijepa_ds.config import config_hash
from ijepa_ds.observability import get_logger
from ijepa_ds.train.ds_config import zero_stage

log = get_logger(__name__)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_rng_states() -> list[dict]:
    mine = capture_rng()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def universal_client_state() -> dict:
    """What ds_to_universal needs at ZeRO-1/2 to convert a checkpoint for elastic resume."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    return {
        UNIVERSAL_CHECKPOINT_INFO: {
            UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE
        }
    }


def target_state_dict(target) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the target encoder on every rank (gathers under ZeRO-3)."""
    module = target.module
    if not target.partitioned:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {k: v.detach().float().clone() for k, v in module.state_dict().items()}


def build_train_state(trainer, step: int) -> TrainState:
    return TrainState(
        step=step,
        epoch=step // trainer.iterations_per_epoch,
        cursor=step * trainer.global_batch_size,
        global_batch_size=trainer.global_batch_size,
        world_size=trainer.dist_env.world_size,
        zero_stage=zero_stage(trainer.ds_config),
        precision=trainer.cfg.optim.precision,
        config_hash=config_hash(trainer.cfg),
        rng=_all_rng_states(),
        versions=versions(),
    )


def save_checkpoint(trainer, run_dir: str | Path, step: int, reason: str) -> Path:
    """Write ``<run_dir>/checkpoints/step_<step>`` with all ranks; returns the folder.

    Order: temporary folder -> DeepSpeed shards (all ranks) -> target + train state (rank 0)
    -> barrier -> completion marker -> rename -> ``latest`` (rank 0) -> barrier.
    """
    started = time.perf_counter()
    rank = trainer.dist_env.rank
    root = checkpoints_dir(run_dir)
    name = step_folder_name(step)
    tmp, final = root / f"{TMP_PREFIX}{name}", root / name
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a save that died; it never counted
            shutil.rmtree(tmp)
    _barrier()
    trainer.engine.save_checkpoint(
        str(tmp), tag=ENGINE_TAG, client_state=universal_client_state(), save_latest=False
    )
    target = target_state_dict(trainer.target)
    state = build_train_state(trainer, step)
    if rank == 0:
        atomic_torch_save({"state_dict": target}, tmp / TARGET_FILE)
        atomic_torch_save(state.state_dict(), tmp / STATE_FILE)
    _barrier()
    if rank == 0:
        write_complete_marker(tmp, {"step": step, "reason": reason, "time": time.time()})
        publish(tmp, final, run_dir)
    _barrier()
    log.info("saved %s (%s) in %.1f s", final, reason, time.perf_counter() - started)
    return final


def prune_checkpoints(run_dir: str | Path, keep_last: int, milestone_every: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last``, keeping milestones.

    Call on rank 0 only, after a successful save. Returns the removed folders.
    """
    if keep_last <= 0:
        return []
    folders = complete_checkpoints(run_dir)
    removed = []
    for folder in folders[:-keep_last]:
        step = step_of(folder)
        if milestone_every and step % milestone_every == 0:
            continue
        shutil.rmtree(folder)
        removed.append(folder)
    return removed


class CheckpointHook:
    """Training-loop hook: saves when the policy says so; returns True to stop the loop."""

    def __init__(self, trainer, run_dir: str | Path, policy, keep_last: int, milestone_every: int):
        self.trainer, self.run_dir, self.policy = trainer, Path(run_dir), policy
        self.keep_last, self.milestone_every = keep_last, milestone_every
        self.saved: list[Path] = []

    def __call__(self, step: int, info: dict, tensors) -> bool:
        reason, stop = self.policy.decide(step)
        if reason is None:
            return False
        self.saved.append(save_checkpoint(self.trainer, self.run_dir, step, reason))
        if self.trainer.dist_env.rank == 0:
            prune_checkpoints(self.run_dir, self.keep_last, self.milestone_every)
        _barrier()
        return stop
