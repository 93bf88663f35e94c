"""Collective checkpoint saves: every rank enters together, only a complete folder counts.

A write that fails (disk full, read-only or vanished file system) is not raised where it
happens: the rank keeps taking part in every collective of the save, the ranks then agree on
the outcome, and every rank raises ``CheckpointSaveError`` with the failing rank, path and OS
error. Raising on the spot would leave the other ranks waiting in a barrier for a rank that is
gone. The temporary folder is removed and ``latest`` still names the previous checkpoint.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from ijepa_ds.backend.ds_config import zero_stage
from ijepa_ds.checkpoint.layout import (
    ENGINE_TAG,
    STATE_FILE,
    TARGET_FILE,
    checkpoints_dir,
    complete_checkpoints,
    publish,
    read_best,
    read_latest,
    step_folder_name,
    step_of,
    write_complete_marker,
)
from ijepa_ds.checkpoint.state import TrainState, capture_rng, versions
from ijepa_ds.checkpoint.verify import model_arch
from ijepa_ds.config import config_hash
from ijepa_ds.fileio import TMP_PREFIX, atomic_torch_save
from ijepa_ds.observability import get_logger

log = get_logger(__name__)


class CheckpointSaveError(RuntimeError):
    """A checkpoint save failed on some rank; nothing was published."""


class WriteFailures:
    """This rank's first failed write of a save, recorded instead of raised.

    ``call`` runs a write; after a failure later writes are skipped (returning None), since the
    save is lost anyway and each would only fail again.
    """

    def __init__(self) -> None:
        self.error: str | None = None

    def call(self, path, write: Callable, *args):
        if self.error is not None:
            return None
        try:
            return write(*args)
        except Exception as err:  # noqa: BLE001 - reported on every rank by agree_or_raise
            self.error = describe_write_error(path, err)
            return None


def describe_write_error(path, err: BaseException) -> str:
    """``<path>: <OS error>``, plus the free space left where it was being written."""
    text = f"{path}: {type(err).__name__}: {err}"
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        text += f" ({shutil.disk_usage(folder).free} bytes free on that file system)"
    except OSError as usage_err:  # the message about the failed write matters more
        text += f" (free space unknown: {usage_err})"
    return text


def agree_or_raise(failures: WriteFailures, step: int, run_dir, tmp: Path, rank: int) -> None:
    """Collective: every rank learns whether any rank failed; if so all raise the same error."""
    errors = [failures.error]
    if dist.is_initialized() and dist.get_world_size() > 1:
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, failures.error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space the partial save took
    try:
        previous = read_latest(run_dir)
    except (OSError, ValueError):
        previous = None
    kept = f"{previous} is still the latest checkpoint" if previous else "no checkpoint exists yet"
    detail = "; ".join(f"rank {r}: {e}" for r, e in failed)
    raise CheckpointSaveError(f"checkpoint save of step {step} failed on {detail}; {kept}")


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
        model=model_arch(trainer.cfg),
    )


def save_checkpoint(trainer, run_dir: str | Path, step: int, reason: str) -> Path:
    """Write ``<run_dir>/checkpoints/step_<step>`` with all ranks; returns the folder.

    Order: temporary folder -> DeepSpeed shards (all ranks) -> target + train state (rank 0)
    -> agree -> completion marker -> rename -> ``latest`` (rank 0) -> agree. Each "agree" is
    where a failed write on any rank becomes ``CheckpointSaveError`` on every rank.
    """
    started = time.perf_counter()
    rank = trainer.dist_env.rank
    root = checkpoints_dir(run_dir)
    name = step_folder_name(step)
    tmp, final = root / f"{TMP_PREFIX}{name}", root / name
    failures = WriteFailures()
    if rank == 0:
        failures.call(root, lambda: root.mkdir(parents=True, exist_ok=True))
        if tmp.exists():  # left by a save that died; it never counted
            failures.call(tmp, shutil.rmtree, tmp)
    agree_or_raise(failures, step, run_dir, tmp, rank)
    trainer.engine.save(str(tmp), ENGINE_TAG, failures)
    target = trainer.target.full_state_dict(keep=rank == 0)  # collective; rank 0 writes it
    state = build_train_state(trainer, step)
    if rank == 0:
        target_file, state_file = tmp / TARGET_FILE, tmp / STATE_FILE
        failures.call(target_file, atomic_torch_save, {"state_dict": target}, target_file)
        failures.call(state_file, atomic_torch_save, state.state_dict(), state_file)
    agree_or_raise(failures, step, run_dir, tmp, rank)
    if rank == 0:
        info = {"step": step, "reason": reason, "time": time.time()}
        failures.call(tmp, write_complete_marker, tmp, info)
        aside = failures.call(final, publish, tmp, final, run_dir)
        if aside is not None:
            log.warning("%s existed from an earlier attempt: renamed to %s", final, aside.name)
    agree_or_raise(failures, step, run_dir, tmp, rank)
    log.info("saved %s (%s) in %.1f s", final, reason, time.perf_counter() - started)
    return final


def prune_checkpoints(run_dir: str | Path, keep_last: int, milestone_every: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last``, keeping milestones and the
    ``best`` one.

    Call on rank 0 only, after a successful save. Returns the removed folders.
    """
    if keep_last <= 0:
        return []
    folders = complete_checkpoints(run_dir)
    best = read_best(run_dir)
    removed = []
    for folder in folders[:-keep_last]:
        step = step_of(folder)
        if (milestone_every and step % milestone_every == 0) or folder == best:
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
            try:
                prune_checkpoints(self.run_dir, self.keep_last, self.milestone_every)
            except OSError as err:  # the new checkpoint is safe; an old one stays on disk
                log.warning("could not prune old checkpoints: %s", err)
        _barrier()
        return stop
