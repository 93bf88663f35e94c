"""Atomic writes: the old file or the new one, never a partial file or a stray temporary."""

from __future__ import annotations

import pytest
import torch

from ijepa_ds.fileio import TMP_PREFIX, atomic_save, atomic_torch_save, atomic_write_bytes


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert not any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())


def test_torch_save_round_trip(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    path = atomic_torch_save(obj, tmp_path / "x.pt")
    back = torch.load(path, weights_only=True)
    assert back["step"] == 7 and torch.equal(back["w"], obj["w"])


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
