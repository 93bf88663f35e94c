"""Atomic file writes and safe reads.

Writes: a crash leaves the old file or the new one, never a partial file.

Every file the package writes for later reading (checkpoint parts and pointers, converted
checkpoints, cached features, metrics logs) goes through ``atomic_save``: write a temporary
file beside the target, fsync it, ``os.replace`` it into place, fsync the folder.

Reads: every torch file the package opens goes through ``safe_torch_load``
(``weights_only=True``), so a file whose unpickling could run code is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class UnreadableFileError(ValueError):
    """A file that cannot be loaded as plain data; the message names the file and why."""


def safe_torch_load(
    path: str | Path,
    what: str,
    mmap: bool = False,
    error: type[Exception] = UnreadableFileError,
    allowed: tuple = (),
) -> Any:
    """``torch.load(weights_only=True)`` on CPU with errors that name the file.

    A file whose unpickling would need arbitrary Python objects (and so could run code) is
    refused, never executed; truncated or corrupt files raise ``error`` too, a missing one
    ``FileNotFoundError``. ``allowed``: classes a plain-data file may also hold (DeepSpeed's
    loss scalers and enums). ``mmap=True`` maps the tensors instead of reading them: pages are
    read when touched, and they are page cache, not the process's own memory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise error(f"{path}: unreadable {what} ({err})") from err
        detail = next((ln.strip() for ln in str(err).splitlines() if "global" in ln.lower()), "")
        raise error(
            f"{path}: refused: loading this {what} needs arbitrary unpickling, which can execute "
            f"code ({detail or 'non-tensor objects'}); expected tensors and plain containers only"
        ) from err
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        # Truncated zip archives raise RuntimeError, empty files EOFError, junk KeyError.
        first = str(err).splitlines()[0] if str(err) else "no detail"
        raise error(
            f"{path}: unreadable {what}, truncated or corrupt ({type(err).__name__}: {first})"
        ) from err
