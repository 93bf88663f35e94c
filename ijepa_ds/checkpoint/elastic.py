"""Elastic resume: continue on another number of ranks (or ZeRO stage) via DeepSpeed's
universal checkpoint format.

A regular DeepSpeed checkpoint is sharded for the world size that wrote it. When the world
size or ZeRO stage differs, rank 0 converts ``<step>/engine`` once into ``<step>/universal``
(``deepspeed.checkpoint.ds_to_universal``, published atomically; the original is untouched),
the engine is built with ``checkpoint.load_universal`` and loads it. The global batch stays the
same; gradient accumulation is recomputed for the new world size by the config.

DeepSpeed 0.19.8's ZeRO-3 multi-group universal-load bug is repaired by the engine's own
``load(universal=True)`` (``backend.zero_files.fix_zero3_universal_groups``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed as dist

from ijepa_ds.backend.zero_files import run_ds_to_universal
from ijepa_ds.checkpoint.layout import ENGINE_TAG, is_complete, write_complete_marker
from ijepa_ds.fileio import TMP_PREFIX
from ijepa_ds.observability import get_logger

log = get_logger(__name__)
UNIVERSAL = "universal"


def needs_universal(state, world_size: int, stage: int) -> bool:
    """True when the checkpoint must go through the universal format to load here.

    ZeRO 0 keeps one full copy of weights and optimizer (``mp_rank_00_model_states.pt``), which
    loads on any number of ranks as it is.
    """
    if state.zero_stage == stage == 0:
        return False
    return state.world_size != world_size or state.zero_stage != stage


def enable_universal_load(ds_config: dict) -> None:
    ds_config.setdefault("checkpoint", {})["load_universal"] = True


def convert_to_universal(folder: Path) -> Path:
    """``<folder>/engine`` -> ``<folder>/universal/engine`` (idempotent, atomic). Rank 0 only."""
    final = folder / UNIVERSAL
    if is_complete(final):
        return final
    tmp = folder / f"{TMP_PREFIX}{UNIVERSAL}"
    if tmp.exists():
        shutil.rmtree(tmp)
    log.info("converting %s to a universal checkpoint for elastic resume", folder)
    done = run_ds_to_universal(folder / ENGINE_TAG, tmp / ENGINE_TAG)
    if done.returncode != 0:
        log.error("ds_to_universal output:\n%s\n%s", done.stdout[-2000:], done.stderr[-4000:])
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(
            f"ds_to_universal failed on {folder / ENGINE_TAG} (exit {done.returncode}): {last}"
        )
    write_complete_marker(tmp, {"source": str(folder / ENGINE_TAG)})
    os.rename(tmp, final)
    return final


def prepare_universal(folder: Path, rank: int) -> Path:
    """Rank 0 converts; everybody waits for it and learns whether it worked.

    A failed conversion, or a universal file that is not plain data, raises the same
    ``CheckpointError`` on every rank (rather than on rank 0 alone, with the others left waiting
    in a barrier).
    """
    from ijepa_ds.checkpoint.verify import CheckpointError, check_universal_files

    error = [None]
    if rank == 0:
        try:
            check_universal_files(convert_to_universal(folder))
        except (RuntimeError, OSError, ValueError) as err:
            error = [f"cannot resume {folder} on another world size or ZeRO stage: {err}"]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise CheckpointError(error[0])
    return folder / UNIVERSAL


def load_elastic(trainer, folder: Path, state) -> None:
    """Load the universal form of ``folder`` into an engine built with ``load_universal``."""
    engine = trainer.engine
    if not engine.load(str(folder / UNIVERSAL), ENGINE_TAG, universal=True):
        raise RuntimeError(f"DeepSpeed could not load the universal checkpoint in {folder}")
    log.info(
        "elastic resume: %d ranks (ZeRO %d) -> %d ranks (ZeRO %d)",
        state.world_size,
        state.zero_stage,
        trainer.dist_env.world_size,
        engine.zero_stage,
    )
