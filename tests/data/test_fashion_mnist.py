"""Fashion-MNIST IDX reader: hand-written IDX files always, the Debian package when installed."""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from ijepa_ds.data.fashion_mnist import (
    DEBIAN_ROOT,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    FashionMNIST,
    read_idx,
)
from ijepa_ds.data.transforms import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    build_eval_transform,
    build_train_transform,
)

HAVE_DEBIAN = os.path.isfile(os.path.join(DEBIAN_ROOT, "train-images-idx3-ubyte.gz"))
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN,
    reason=f"Debian package dataset-fashion-mnist not installed (no files in {DEBIAN_ROOT})",
)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: 0x0000, type 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_split(folder: str, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    os.makedirs(folder, exist_ok=True)
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        path = os.path.join(folder, f"{prefix}-{kind}-ubyte")
        if gz:
            with gzip.open(path + ".gz", "wb") as f:
                f.write(idx_bytes(arr))
        else:
            with open(path, "wb") as f:
                f.write(idx_bytes(arr))


def small_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_hand_written_idx_files(tmp_path, gz: bool) -> None:
    images, labels = small_split(7)
    write_split(str(tmp_path), "train", images, labels, gz)
    write_split(str(tmp_path), "t10k", images[:3], labels[:3], gz)
    train = FashionMNIST(str(tmp_path), train=True)
    test = FashionMNIST(str(tmp_path), train=False)
    assert len(train) == 7 and len(test) == 3
    np.testing.assert_array_equal(train.images, images)
    assert train.targets.tolist() == labels.tolist()
    img, label = train[4]
    assert img.shape == (1, 28, 28) and label == labels[4]
    torch.testing.assert_close(img[0], torch.from_numpy(images[4]).float() / 255)


def test_matches_torchvisions_reader(tmp_path) -> None:
    images, labels = small_split(5, seed=1)
    write_split(str(tmp_path), "train", images, labels, gz=False)
    for stem, magic in (
        ("train-images-idx3-ubyte", IMAGES_MAGIC),
        ("train-labels-idx1-ubyte", LABELS_MAGIC),
    ):
        path = os.path.join(tmp_path, stem)
        ours = torch.from_numpy(read_idx(path, magic).copy())
        assert torch.equal(ours, read_sn3_pascalvincent_tensor(path))


def test_finds_torchvision_download_layout(tmp_path) -> None:
    images, labels = small_split(4)
    write_split(os.path.join(tmp_path, "FashionMNIST", "raw"), "train", images, labels, gz=False)
    assert FashionMNIST(str(tmp_path)).targets.tolist() == labels.tolist()


def test_missing_files_name_the_paths(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*dataset-fashion-mnist"):
        FashionMNIST(str(tmp_path))


def test_bad_magic_names_the_file(tmp_path) -> None:
    images, labels = small_split(3)
    write_split(str(tmp_path), "train", images, labels, gz=False)
    path = os.path.join(tmp_path, "train-labels-idx1-ubyte")
    with pytest.raises(
        ValueError, match=f"{path} has magic number 0x00000801, expected 0x00000803"
    ):
        read_idx(path, IMAGES_MAGIC)
    data = bytearray(Path(path).read_bytes())
    data[2] = 0x0D  # float type code
    Path(path).write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=rf"IDX file {re.escape(path)} has magic number 0x00000d01"
    ):
        FashionMNIST(str(tmp_path))


@pytest.mark.parametrize("cut", [2, 10, 100])
def test_truncated_file_names_the_file(tmp_path, cut: int) -> None:
    images, labels = small_split(3)
    write_split(str(tmp_path), "train", images, labels, gz=False)
    path = os.path.join(tmp_path, "train-images-idx3-ubyte")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 50] if cut == 100 else data[:cut])
    with pytest.raises(ValueError, match=rf"IDX file {re.escape(path)} is truncated"):
        FashionMNIST(str(tmp_path))


def test_trailing_bytes_and_broken_gzip_name_the_file(tmp_path) -> None:
    path = os.path.join(tmp_path, "x-labels-idx1-ubyte")
    Path(path).write_bytes(idx_bytes(np.arange(4, dtype=np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match=rf"{re.escape(path)} is longer than its header says"):
        read_idx(path, LABELS_MAGIC)
    gz_path = path + ".gz"
    with gzip.open(gz_path, "wb") as f:
        f.write(idx_bytes(np.arange(200, dtype=np.uint8)))
    data = Path(gz_path).read_bytes()
    Path(gz_path).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot read IDX file {re.escape(gz_path)}"):
        read_idx(gz_path, LABELS_MAGIC)


def test_inconsistent_split_is_rejected(tmp_path) -> None:
    images, labels = small_split(3)
    write_split(str(tmp_path), "train", images, labels[:2], gz=True)
    with pytest.raises(ValueError, match=r"holds 3 images but .* holds 2 labels"):
        FashionMNIST(str(tmp_path))
    write_split(str(tmp_path), "train", images, np.array([1, 10, 2], np.uint8), gz=True)
    with pytest.raises(ValueError, match=r"has label 10, expected 0\.\.9"):
        FashionMNIST(str(tmp_path))


@needs_debian
def test_real_train_split() -> None:
    tf = build_train_transform(28, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    train = FashionMNIST(DEBIAN_ROOT, train=True, transform=tf)
    assert len(train) == 60000
    assert train.images.shape == (60000, 28, 28)
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    # Exact pixel mean/std from the 256-bin histogram (cheaper than float copies of 47M pixels).
    counts = torch.bincount(torch.from_numpy(train.images.copy()).view(-1), minlength=256)
    counts, values = counts.double(), torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt()
    assert abs(mean - FASHION_MNIST_MEAN[0]) < 1e-4 and abs(std - FASHION_MNIST_STD[0]) < 1e-4
    for i in (0, 12345, 59999):
        img, label = train[i]
        assert img.shape == (1, 28, 28) and 0 <= label <= 9


@needs_debian
def test_real_test_split_matches_torchvision(tmp_path) -> None:
    tf = build_eval_transform(28, resize_size=28, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    test = FashionMNIST(DEBIAN_ROOT, train=False, transform=tf)
    assert len(test) == 10000
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    img, _ = test[0]
    assert img.shape == (1, 28, 28)
    expected = (torch.from_numpy(test.images[0].copy()).float() / 255 - FASHION_MNIST_MEAN[0]) / (
        FASHION_MNIST_STD[0]
    )
    torch.testing.assert_close(img[0], expected)
    # torchvision's own IDX reader on the decompressed file agrees on all 10000 images.
    plain = os.path.join(tmp_path, "t10k-images-idx3-ubyte")
    gz = os.path.join(DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz")
    with gzip.open(gz) as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert torch.equal(torch.from_numpy(test.images.copy()), read_sn3_pascalvincent_tensor(plain))
