"""Metrics sinks: TensorBoard event files, a ``metrics.jsonl`` log and optionally a Weights &
Biases run, written by rank 0 only.

Layout inside the run folder::

    <run_dir>/tensorboard/events.out.tfevents.*   scalars and images
    <run_dir>/metrics.jsonl                       {"step": 120, "time": 1.7e9, "train/loss": ...}
    <run_dir>/wandb/                              W&B's files (see ``wandb_sink``)

Each JSONL line is flushed as soon as it is written, so a crash loses at most the line being
written. Non-finite values are stored as ``null`` to keep the file strict JSON. On every other
rank the writer is a no-op that creates no file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ijepa_ds.fileio import atomic_write_bytes
from ijepa_ds.observability.wandb_sink import WandbOptions, WandbSink

TENSORBOARD_SUBDIR = "tensorboard"
JSONL_NAME = "metrics.jsonl"
_RESERVED_KEYS = ("step", "time")


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {key!r}: expected a scalar tensor, got shape {value.shape}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__}")
    return float(value)


def _truncate_jsonl(path: Path, resume_step: int) -> None:
    """Drop lines at or after ``resume_step`` (written after the checkpoint being resumed, so
    they will be logged again) and any half-written line a crash left behind."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", resume_step) < resume_step:
            kept.append(line)
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


class MetricsWriter:
    """Writes scalars and images for one run.

    Args:
        run_dir: the run folder (created on rank 0 if missing).
        rank: global rank; only rank 0 writes anything.
        tensorboard: write TensorBoard event files under ``<run_dir>/tensorboard``.
        jsonl: append one JSON object per ``log_scalars`` call to ``<run_dir>/metrics.jsonl``.
        resume_step: when resuming, the first step that will be logged again: JSONL lines with
            ``step >= resume_step`` are removed and TensorBoard hides events from that step on
            (``purge_step``), so curves do not show the replayed steps twice. W&B continues the
            run folder's W&B run.
        wandb: also send every scalar and image to a W&B run with these options (None = off).
    """

    def __init__(
        self,
        run_dir: str | Path,
        rank: int,
        tensorboard: bool = True,
        jsonl: bool = True,
        resume_step: int | None = None,
        wandb: WandbOptions | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.rank = rank
        self._tb = None
        self._jsonl = None
        self._wandb = None
        if rank != 0 or not (tensorboard or jsonl or wandb):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            # Imported here so that runs with TensorBoard off never import it.
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.run_dir / TENSORBOARD_SUBDIR), purge_step=resume_step
            )
        if jsonl:
            path = self.run_dir / JSONL_NAME
            if resume_step is not None and path.exists():
                _truncate_jsonl(path, resume_step)
            self._jsonl = path.open("a", encoding="utf-8")
        if wandb is not None:
            try:
                self._wandb = WandbSink(self.run_dir, wandb, resume=resume_step is not None)
            except Exception:
                self.close()  # the sinks opened above
                raise

    @property
    def enabled(self) -> bool:
        """True when this writer writes anything (rank 0 with at least one sink)."""
        return self._tb is not None or self._jsonl is not None or self._wandb is not None

    def log_scalars(self, step: int, scalars: Mapping[str, float | torch.Tensor]) -> None:
        """Write ``scalars`` (name -> number or one-element tensor) for global step ``step``.

        Names use ``/`` to group TensorBoard panels (``train/loss``, ``perf/img_per_s``).
        """
        if not self.enabled:
            return
        values = {key: _to_float(key, value) for key, value in scalars.items()}
        clash = [key for key in _RESERVED_KEYS if key in values]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the JSONL record")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, global_step=step)
        if self._jsonl is not None:
            record = {"step": int(step), "time": time.time()}
            record.update({k: v if math.isfinite(v) else None for k, v in values.items()})
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()
        if self._wandb is not None:
            self._wandb.log_scalars(step, values)

    def log_image(self, step: int, tag: str, img_uint8_chw: torch.Tensor | np.ndarray) -> None:
        """Write one image to TensorBoard and W&B (JSONL holds scalars only).

        Args:
            img_uint8_chw: ``[C, H, W]`` uint8 with C in {1, 3, 4} (grey, RGB, RGBA).
        """
        if self._tb is None and self._wandb is None:
            return
        img = torch.as_tensor(img_uint8_chw).detach().cpu()
        if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"log_image({tag!r}): expected a uint8 [C, H, W] image with C in (1, 3, 4), "
                f"got dtype {img.dtype} and shape {tuple(img.shape)}"
            )
        if self._tb is not None:
            self._tb.add_image(tag, img.numpy(), global_step=step, dataformats="CHW")
        if self._wandb is not None:
            self._wandb.log_image(step, tag, img.numpy())

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        """Flush and close every sink (finishing the W&B run); later calls are no-ops."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
