"""One rank-aware logger for the whole package.

Every module logs through ``get_logger(__name__)``; ``setup_logging`` installs the handlers once
per process on the package logger ``ijepa_ds``. Rank 0 prints at the requested level; the other
ranks print WARNING and above only, so an N-process run does not print every line N times while
a problem seen by a single rank still reaches the console. Each rank may also keep its own full
log file in the run folder (``rank_log_file``), where nothing is filtered by rank.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

PACKAGE_LOGGER = "ijepa_ds"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Marks the handlers this module installed, so setup/reset never touch anyone else's.
_OWNED = "_ijepa_ds_owned"


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the package logger, whatever ``name`` is.

    Module names inside the package (``ijepa_ds.train``) are used as they are; anything else
    (``__main__`` of a launcher script, a test) is placed under ``ijepa_ds.`` so that it gets the
    same rank-aware handlers instead of the unconfigured root logger.
    """
    if name == PACKAGE_LOGGER or name.startswith(PACKAGE_LOGGER + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{PACKAGE_LOGGER}.{name}")


def rank_log_file(run_dir: str | Path, rank: int) -> Path:
    """Path of rank ``rank``'s log file inside the run folder: ``<run_dir>/logs/rank{rank}.log``."""
    return Path(run_dir) / "logs" / f"rank{rank}.log"


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(
            f"unknown log level {level!r}; expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return value


def _owned_handler(handler: logging.Handler, level: int, rank: int) -> logging.Handler:
    fmt = f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt=_DATE_FORMAT))
    handler.setLevel(level)
    setattr(handler, _OWNED, True)
    return handler


def setup_logging(
    rank: int,
    level: str | int = "INFO",
    log_file: str | Path | None = None,
    *,
    stream: TextIO | None = None,
) -> logging.Logger:
    """Configure the package logger for this process and return it.

    Args:
        rank: global rank of this process; it prefixes every line as ``[rank r]``.
        level: console level on rank 0; other ranks print ``max(level, WARNING)``.
        log_file: optional file receiving every record at ``level`` on any rank (use
            ``rank_log_file(run_dir, rank)`` so ranks do not share a file); parents are created.
        stream: console stream, ``sys.stdout`` (looked up at call time) when None.

    Calling it again replaces the handlers it installed before (no duplicated lines).
    """
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    base = _parse_level(level)
    logger = logging.getLogger(PACKAGE_LOGGER)
    reset_logging()
    console_level = base if rank == 0 else max(base, logging.WARNING)
    console = logging.StreamHandler(stream if stream is not None else sys.stdout)
    logger.addHandler(_owned_handler(console, console_level, rank))
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.addHandler(_owned_handler(logging.FileHandler(path), base, rank))
    # The logger must pass records down to the file handler even when the console filters them.
    logger.setLevel(base)
    # Our handlers already print everything; propagating would duplicate lines if anyone
    # (a library, basicConfig) configures the root logger.
    logger.propagate = False
    return logger


def reset_logging() -> None:
    """Remove and close the handlers ``setup_logging`` installed and restore propagation."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, _OWNED, False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
