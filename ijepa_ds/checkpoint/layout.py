"""Where checkpoints live and how a folder becomes one, atomically.

::

    <run_dir>/checkpoints/step_00000100/   a complete checkpoint
        engine/                            DeepSpeed save_checkpoint(tag="engine"), all ranks
        target_encoder.pt                  {"state_dict": fp32 full target encoder}
        train_state.pt                     TrainState (step, epoch, cursor, RNG per rank, ...)
        COMPLETE                           marker (JSON), written last inside the folder
    <run_dir>/checkpoints/.tmp-step_00000100/   a save in progress (never read)
    <run_dir>/checkpoints/latest           name of the newest complete folder, written last
    <run_dir>/checkpoints/best, best.json  the best folder by eval.best_metric, and its value
    <run_dir>/checkpoints/step_00000100.superseded-<ns>/   replaced by a resumed run (kept)

A folder is written under a temporary name and published by ``os.rename`` after every rank
finished, then ``latest`` is replaced: a crash at any point leaves the previous checkpoint as
``latest`` and never a half-written folder under a real name. DeepSpeed's own ``latest`` file
is written before its final barrier, so it is not trusted.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from ijepa_ds.fileio import atomic_write_bytes, fsync_dir

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"  # pointer to the best checkpoint by eval.best_metric
BEST_VALUE = "best.json"  # that metric's value, so a resumed run keeps comparing against it
COMPLETE = "COMPLETE"
ENGINE_TAG = "engine"
TARGET_FILE = "target_encoder.pt"
STATE_FILE = "train_state.pt"
_STEP_RE = re.compile(r"^step_(\d{8,})$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_folder_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(folder: str | Path) -> int | None:
    match = _STEP_RE.match(Path(folder).name)
    return int(match.group(1)) if match else None


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE).is_file()


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step folders of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None and is_complete(p)]
    return sorted(found, key=step_of)


def read_best(run_dir: str | Path) -> Path | None:
    """The folder the ``best`` pointer names (best by ``eval.best_metric``), or None."""
    pointer = checkpoints_dir(run_dir) / BEST
    return checkpoints_dir(run_dir) / pointer.read_text().strip() if pointer.is_file() else None


def write_best(run_dir: str | Path, folder: Path, metric: str, value: float) -> None:
    """Point ``best`` at ``folder``; ``best.json`` records the metric and its value there."""
    record = {"folder": folder.name, "metric": metric, "value": value}
    atomic_write_bytes(checkpoints_dir(run_dir) / BEST_VALUE, json.dumps(record).encode())
    atomic_write_bytes(checkpoints_dir(run_dir) / BEST, (folder.name + "\n").encode())


def resumed_best(run_dir: str | Path, start_step: int, metric: str) -> float | None:
    """The value of ``metric`` that a run resumed at ``start_step`` must beat to move ``best``.

    None (compare from scratch) when there is no ``best`` yet, when ``best.json`` does not
    describe the folder ``best`` names (a run from before the file existed) or records another
    metric, or when that folder is past ``start_step`` (resumed from an earlier checkpoint:
    that future is redone).
    """
    best, path = read_best(run_dir), checkpoints_dir(run_dir) / BEST_VALUE
    if best is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        folder, recorded, value = record["folder"], record["metric"], float(record["value"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable ({err}); expected {{folder, metric, value}}") from err
    if folder != best.name or recorded != metric or step_of(best) > start_step:
        return None
    return value


def read_latest(run_dir: str | Path) -> Path | None:
    """The folder our ``latest`` pointer names, or None when there is no pointer."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if step_of(name) is None:
        raise ValueError(f"{pointer} holds {name!r}, not a step folder name like step_00000100")
    return checkpoints_dir(run_dir) / name


def write_complete_marker(folder: Path, info: dict) -> None:
    atomic_write_bytes(folder / COMPLETE, (json.dumps(info, sort_keys=True) + "\n").encode())


def publish(tmp_folder: Path, final_folder: Path, run_dir: str | Path) -> Path | None:
    """Rename the finished temporary folder into place, then point ``latest`` at it.

    A folder of the same step from an earlier attempt exists when the run was resumed from
    before it (``--resume-fallback`` past a damaged checkpoint, or an older ``--resume PATH``).
    It is renamed aside to ``<name>.superseded-<ns>`` (no longer a checkpoint, never deleted);
    returns that path, or None.
    """
    aside = None
    if final_folder.exists():
        aside = final_folder.with_name(f"{final_folder.name}.superseded-{time.time_ns()}")
        os.rename(final_folder, aside)
    os.rename(tmp_folder, final_folder)
    fsync_dir(final_folder.parent)
    atomic_write_bytes(checkpoints_dir(run_dir) / LATEST, (final_folder.name + "\n").encode())
    return aside
