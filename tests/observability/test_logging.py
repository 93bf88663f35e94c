"""Rank-aware logging: who prints what, the line prefix, per-rank files, no duplicates."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ijepa_ds.observability.logging import (
    get_logger,
    rank_log_file,
    reset_logging,
    setup_logging,
)

PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \[rank (\d+)\] (\w+) (\S+): (.*)$")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()  # leave the package logger as other tests expect it (propagating)


def _emit_all_levels(name: str) -> None:
    log = get_logger(name)
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")


def _parsed(text: str) -> list[tuple[str, ...]]:
    lines = text.splitlines()
    matches = [PREFIX.match(line) for line in lines]
    assert all(matches), lines
    return [m.groups() for m in matches]


def test_rank0_prints_info_to_stdout_with_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(0)
    _emit_all_levels("ijepa_ds.train")
    out = capsys.readouterr().out
    assert _parsed(out) == [
        ("0", "INFO", "ijepa_ds.train", "i"),
        ("0", "WARNING", "ijepa_ds.train", "w"),
        ("0", "ERROR", "ijepa_ds.train", "e"),
    ]


def test_other_ranks_print_warnings_only() -> None:
    stream = io.StringIO()
    setup_logging(3, level="DEBUG", stream=stream)
    _emit_all_levels("ijepa_ds.data")
    assert [(r, lvl, msg) for r, lvl, _, msg in _parsed(stream.getvalue())] == [
        ("3", "WARNING", "w"),
        ("3", "ERROR", "e"),
    ]


def test_per_rank_file_gets_everything_at_level(tmp_path: Path) -> None:
    path = rank_log_file(tmp_path, 2)
    assert path == tmp_path / "logs" / "rank2.log"
    stream = io.StringIO()
    setup_logging(2, level="INFO", log_file=path, stream=stream)
    _emit_all_levels("launcher")  # a name outside the package still gets our handlers
    reset_logging()  # closes the file
    levels = [lvl for _, lvl, name, _ in _parsed(path.read_text())]
    assert levels == ["INFO", "WARNING", "ERROR"]
    assert {name for _, _, name, _ in _parsed(path.read_text())} == {"ijepa_ds.launcher"}
    assert len(stream.getvalue().splitlines()) == 2


def test_setup_twice_does_not_duplicate_and_reset_restores() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(0, stream=first)
    setup_logging(0, stream=second)
    get_logger("ijepa_ds.x").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1
    package = logging.getLogger("ijepa_ds")
    assert package.propagate is False
    reset_logging()
    assert package.propagate is True and package.handlers == []


def test_rejects_bad_level_and_rank() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        setup_logging(0, level="LOUD")
    with pytest.raises(ValueError, match="rank must be >= 0"):
        setup_logging(-1)
