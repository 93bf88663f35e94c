"""glibc's mmap threshold, pinned: freed tensor memory goes back to the kernel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ijepa_ds.hostmem import pin_mmap_threshold
from tests.helpers import cpu_env

# Frees a 24 MiB tensor (glibc then raises its mmap threshold to 24 MiB unless it is pinned),
# then allocates 16 x 4 MiB and frees every other one: on the heap, the freed ones stay as
# holes the process keeps (mallinfo2's fordblks).
PROBE = """
import ctypes, json, sys
import torch
from ijepa_ds.hostmem import pin_mmap_threshold
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc.mallinfo2.restype = Info
big = torch.ones(6 << 20); del big
keep = [torch.ones(1 << 20) for _ in range(16)]
del keep[::2]
print(json.dumps({"pinned": pinned, "free_heap": libc.mallinfo2().fordblks}))
"""


def _probe(mode: str, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=cpu_env(**env), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_pinned_threshold_returns_freed_tensors_to_the_kernel():
    adaptive, pinned = _probe("adaptive"), _probe("pin")
    assert pinned["pinned"] is True
    assert adaptive["free_heap"] >= 8 * (4 << 20)  # the 8 freed 4 MiB tensors, kept
    assert pinned["free_heap"] < 4 << 20


def test_user_setting_wins():
    assert _probe("pin", MALLOC_MMAP_THRESHOLD_="65536")["pinned"] is False
    with pytest.raises(ValueError, match="positive number of bytes"):
        pin_mmap_threshold(0)
