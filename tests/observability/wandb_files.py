"""Reads W&B offline runs back: wandb 0.31 ships no Python reader of its ``run-<id>.wandb`` log.

The file is a 7-byte header (``:W&B``, magic, version) then a LevelDB-style log: 32 KiB blocks
of chunks, each ``crc32 (4) | length (2, little-endian) | kind (1) | data``, where kind 1 is a
whole record and 2/3/4 the first/middle/last piece of one split over blocks. A block tail too
short for a chunk header is zero padding. Each record is a ``wandb_internal_pb2.Record``.

``run.finish()`` returns before W&B's service process has written the file out (it can still
hold the 7-byte header alone), so a reader in the same process waits for the ``exit`` record.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_HEADER, _BLOCK, _CHUNK = 7, 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    records, pending, pos = [], b"", _HEADER
    while pos + _CHUNK <= len(data):
        left = _BLOCK - pos % _BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK])
        if left < _CHUNK or (length == 0 and kind == 0):
            pos += left  # padding up to the next block
            continue
        assert kind in (_FULL, _FIRST, _MIDDLE, _LAST), f"bad chunk kind {kind} at {pos}"
        if pos + _CHUNK + length > len(data):
            break  # still being written
        pending += data[pos + _CHUNK : pos + _CHUNK + length]
        pos += _CHUNK + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@dataclass
class OfflineRun:
    """What one offline run folder holds: its id, run settings and logged rows."""

    folder: Path
    run_id: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one row per step, "_step" included
    exit_code: int | None = None

    @property
    def keys(self) -> set[str]:
        return {key for row in self.history for key in row}


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _finished_records(log_file: Path, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(log_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{log_file}: no exit record after {timeout} s"
        time.sleep(0.05)


def read_offline_run(folder: Path, timeout: float = 30.0) -> OfflineRun:
    """The run in ``folder``, once its log holds the ``exit`` record (waits up to timeout)."""
    (log_file,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for record in _finished_records(log_file, timeout):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project = record.run.run_id, record.run.project
            run.tags = list(record.run.tags)
            run.config = {_key(i): json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run under ``<run_dir>/wandb/``, oldest first."""
    return [read_offline_run(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]
