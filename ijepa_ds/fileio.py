"""Atomic file writes: a crash leaves the old file or the new one, never a partial file.

Every file the package writes for later reading (checkpoint parts and pointers, converted
checkpoints, cached features, metrics logs) goes through ``atomic_save``: write a temporary
file beside the target, fsync it, ``os.replace`` it into place, fsync the folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

TMP_PREFIX = ".tmp-"  # temporary names start with this; readers never open them


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path``; returns ``path``.

    The temporary file is ``<folder>/.tmp-<name>.<pid>``; it is removed when ``write`` or the
    rename fails (disk full), so a failed save leaves no stray file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """``data`` to ``path``, atomically."""
    return atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    return atomic_save(path, lambda tmp: torch.save(obj, tmp))
