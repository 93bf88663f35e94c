"""Weights & Biases sink of the metrics writer: rank 0 only; ``wandb`` is imported only when on.

Layout inside the run folder::

    <run_dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb   offline: upload with `wandb sync`
    <run_dir>/wandb/run-<time>-<id>/                         online: W&B's local copy
    <run_dir>/wandb_run_id.txt                               the W&B run id

A resumed run reads the id back and continues the same W&B run. The steps replayed since the
checkpoint are sent again under their own numbers; online, W&B ignores steps below the run's
last one, so they keep their first values. Offline, each start leaves its own folder, all with
the same id, and ``wandb sync`` uploads them into the one run.

The values reaching the sink are Python floats and host images already (the writer converts
them for TensorBoard), so it adds no device synchronisation; ``wandb.log`` only hands them
to W&B's own service process.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ijepa_ds.fileio import atomic_write_bytes
from ijepa_ds.observability.logging import get_logger

WANDB_SUBDIR = "wandb"
RUN_ID_FILE = "wandb_run_id.txt"

log = get_logger(__name__)


class WandbError(RuntimeError):
    """W&B could not start a run (package missing, no login, no network for ``online``)."""


@dataclass(frozen=True)
class WandbOptions:
    """What ``wandb.init`` needs beyond the run folder (the ``logging.wandb_*`` fields)."""

    project: str
    entity: str = ""
    mode: str = "online"
    tags: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)


def _run_id(run_dir: Path, resume: bool) -> str | None:
    """The id of the run folder's W&B run when resuming one that had W&B on; else None (W&B
    picks a new one)."""
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if resume and path.is_file() else None


class WandbSink:
    """One W&B run, started in ``<run_dir>/wandb/`` with the resolved config as its config.

    Args:
        run_dir: the run folder (must exist); also names the W&B run.
        options: project, entity, mode, tags and the run config.
        resume: continue the W&B run whose id ``<run_dir>/wandb_run_id.txt`` holds.
    """

    def __init__(self, run_dir: Path, options: WandbOptions, resume: bool = False) -> None:
        try:
            import wandb
        except ImportError as err:
            raise WandbError(
                "logging.wandb=true needs the wandb package: pip install 'ijepa-ds[wandb]'"
            ) from err
        self._wandb = wandb
        self.mode = options.mode
        try:
            self._run = wandb.init(
                project=options.project,
                entity=options.entity or None,
                name=run_dir.name,
                id=_run_id(run_dir, resume),
                resume="allow",
                mode=options.mode,
                dir=str(run_dir),
                tags=list(options.tags),
                config=dict(options.config),
                # Our own logger writes the console and the per-rank log files already.
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as err:  # W&B raises its own error types (CommError, UsageError)
            hint = " (logging.wandb_mode=offline needs no network)" if self.mode == "online" else ""
            raise WandbError(f"W&B could not start in {self.mode} mode: {err}{hint}") from err
        if self.mode != "disabled":
            atomic_write_bytes(run_dir / RUN_ID_FILE, (self._run.id + "\n").encode())

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """``values``: name -> Python float, the same names as the TensorBoard tags."""
        self._run.log(dict(values), step=step)

    def log_image(self, step: int, tag: str, img_chw: np.ndarray) -> None:
        """``img_chw``: ``[C, H, W]`` uint8 with C in {1, 3, 4}."""
        hwc = img_chw[0] if img_chw.shape[0] == 1 else img_chw.transpose(1, 2, 0)
        self._run.log({tag: self._wandb.Image(hwc)}, step=step)

    def close(self) -> None:
        """Finish the run: failed when an exception is on its way out (``close`` runs in the
        trainer's ``finally``), else successful. Offline, says how to upload it."""
        failed = sys.exc_info()[0] is not None
        sync_dir = self._run.settings.sync_dir
        self._run.finish(exit_code=1 if failed else 0)
        if self.mode == "offline":
            log.info("W&B offline run in %s; upload it with: wandb sync %s", sync_dir, sync_dir)
