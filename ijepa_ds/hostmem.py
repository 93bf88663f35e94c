"""Host-memory hygiene for CPU ranks: keep glibc from hoarding freed tensor memory.

glibc serves an allocation from its heap unless it is above the mmap threshold, and that
threshold adapts: each time an mmapped block is freed, it rises to that block's size (up to
32 MiB). Training frees blocks of every size on every step (ZeRO-3 gathers and releases each
transformer block's weights, activations come and go), so after the first step most tensors
below 32 MiB land on the heap, and the heap keeps the holes between live blocks. On ViT-H/14
under ZeRO-3 (2 CPU ranks) this was ~2 GiB per rank of freed-but-held memory at depth 16
(``bench/results/scale_rehearsal.md``), enough to push two ranks past 24 GiB at depth 32.

Pinning the threshold (``mallopt(M_MMAP_THRESHOLD)``) turns the adaptation off: blocks above
it are always mmapped and go back to the kernel the moment they are freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
DEFAULT_MMAP_THRESHOLD = 1 << 20  # 1 MiB: activations and weights above it are returned at once
ENV_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"  # glibc's own variable: the user's choice wins


def pin_mmap_threshold(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process.

    Does nothing (returns False) when the C library is not glibc or when the user set
    ``MALLOC_MMAP_THRESHOLD_`` (glibc read it at start-up). Returns True once pinned.
    """
    if threshold <= 0:
        raise ValueError(f"mmap threshold must be a positive number of bytes, got {threshold}")
    if ENV_OVERRIDE in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
