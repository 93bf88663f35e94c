"""Fashion-MNIST read straight from the standard IDX files (gzipped or not).

Looked up in ``root`` itself (Debian's ``dataset-fashion-mnist`` package installs them in
``/usr/share/datasets/fashion-mnist/``) or in torchvision's download layout
``<root>/FashionMNIST/raw/``. The whole split is held as one uint8 array ``[N, 28, 28]``, which
DataLoader workers forked from the main process share without copying.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), then the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_SPLIT_PREFIX = {True: "train", False: "t10k"}


def read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Read one uint8 IDX file (``.gz`` decompressed on the fly) into an array.

    The header is the big-endian magic number followed by one big-endian uint32 per dimension.
    Raises ``ValueError`` naming ``path`` when the file is not valid gzip, has another magic
    number, or holds fewer or more bytes than the header announces.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"IDX file {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"IDX file {path} is truncated inside its {header_size}-byte header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header_size + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"IDX file {path} is {state}: {len(raw)} bytes, header {dims} needs {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def find_idx_file(root: str, stem: str) -> str:
    """Path of ``stem`` (or ``stem.gz``) in ``root`` or ``root/FashionMNIST/raw``."""
    folders = [root, os.path.join(root, "FashionMNIST", "raw")]
    tried = []
    for folder in folders:
        for name in (stem + ".gz", stem):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
            tried.append(path)
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found; tried {tried}. Install Debian's "
        f"'dataset-fashion-mnist' (files in {DEBIAN_ROOT}) or use torchvision's download folder."
    )


class FashionMNIST(Dataset):
    """Fashion-MNIST split: items are ``(transform(PIL 'L' 28x28), label)``.

    Without a transform the image comes back as a float tensor ``[1, 28, 28]`` in ``[0, 1]``.
    ``images`` is uint8 ``[N, 28, 28]`` and ``targets`` int64 ``[N]`` (labels in 0..9).
    """

    def __init__(
        self, root: str, train: bool = True, transform: Callable[[Image.Image], Any] | None = None
    ) -> None:
        prefix = _SPLIT_PREFIX[bool(train)]
        images_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
        labels_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                f"{labels.shape[0]} labels"
            )
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise ValueError(f"{labels_path} has label {int(labels.max())}, expected 0..9")
        self.root = root
        self.train = bool(train)
        self.transform = transform
        self.images = images
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.classes = CLASSES

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])  # uint8 [28, 28] -> mode "L"
        label = int(self.targets[index])
        if self.transform is None:
            return to_tensor(img), label
        return self.transform(img), label
