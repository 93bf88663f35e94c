"""PositionDataset, the training DataLoader and the dataset factory."""

from __future__ import annotations

import itertools
import os
import re

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from ijepa_ds.config import load_config
from ijepa_ds.data.fashion_mnist import DEBIAN_ROOT, FashionMNIST
from ijepa_ds.data.image_folder import ImageFolder
from ijepa_ds.data.loader import (
    PositionDataset,
    build_dataset,
    build_dataset_from_config,
    build_train_loader,
    default_root,
)
from ijepa_ds.data.sampler import PositionMap
from ijepa_ds.data.synthetic import SyntheticImages
from ijepa_ds.data.transforms import build_train_transform

G, SEED = 16, 7


class OneImage(Dataset):
    """Every index shows the same picture, so any difference between items is the crop."""

    def __init__(self, n: int, transform) -> None:
        self.n, self.transform = n, transform
        self.img = Image.fromarray(SyntheticImages(1, image_size=40).image_array(0))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.transform(self.img), index


def synthetic(n: int = 40) -> SyntheticImages:
    return SyntheticImages(n, image_size=24, transform=build_train_transform(16))


def test_items_follow_the_position_contract() -> None:
    base = synthetic()
    ds = PositionDataset(base, G, SEED)
    pmap = PositionMap(len(base), G, SEED)
    for p in (0, 5, 31, 32, 77, 500):
        img, label, position = ds[p]
        assert position == p and img.shape == (3, 16, 16)
        assert label == int(base.targets[pmap.index_of(p)])


def test_same_position_same_crop_in_any_order() -> None:
    ds = PositionDataset(OneImage(32, build_train_transform(16, crop_scale=(0.1, 0.5))), G, SEED)
    first = {p: ds[p][0] for p in range(6)}
    again = PositionDataset(OneImage(32, build_train_transform(16, crop_scale=(0.1, 0.5))), G, SEED)
    torch.manual_seed(123)  # the caller's RNG state must not matter
    for p in reversed(range(6)):
        assert torch.equal(again[p][0], first[p])
    crops = list(first.values())
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(crops, 2))
    other_seed = PositionDataset(
        OneImage(32, build_train_transform(16, crop_scale=(0.1, 0.5))), G, SEED + 1
    )
    assert not torch.equal(other_seed[0][0], first[0])


def test_getitem_leaves_global_rng_untouched() -> None:
    ds = PositionDataset(synthetic(), G, SEED)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    ds[3], ds[40]
    assert torch.equal(torch.get_rng_state(), state)


def run_loader(num_workers: int, start_step: int = 0, rank: int = 1, **kw) -> list:
    loader = build_train_loader(
        synthetic(),
        default_collate,
        G,
        4,
        rank,
        2,
        SEED,
        start_step=start_step,
        max_steps=7,
        num_workers=num_workers,
        **kw,
    )
    return list(loader)


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (img_a, lab_a, pos_a), (img_b, lab_b, pos_b) in zip(a, b, strict=True):
        assert torch.equal(pos_a, pos_b) and torch.equal(lab_a, lab_b)
        assert torch.equal(img_a, img_b)


def test_worker_count_does_not_change_the_stream() -> None:
    serial = run_loader(0)
    assert len(serial) == 14  # 7 steps x A=2, across an epoch boundary (I = 2)
    assert serial[0][2].tolist() == [4, 5, 6, 7] and serial[1][2].tolist() == [12, 13, 14, 15]
    assert_same_batches(run_loader(2, persistent_workers=True, prefetch_factor=3), serial)


def test_resume_mid_epoch_gives_the_tail() -> None:
    full = run_loader(0)
    assert_same_batches(run_loader(0, start_step=3), full[6:])


def test_loader_options_and_rng() -> None:
    loader = build_train_loader(
        synthetic(),
        default_collate,
        G,
        4,
        0,
        2,
        SEED,
        num_workers=0,
        pin_memory=True,
        persistent_workers=True,
        prefetch_factor=4,
    )
    assert loader.pin_memory == torch.cuda.is_available()
    assert loader.persistent_workers is False and loader.prefetch_factor is None
    with pytest.raises(TypeError):
        len(loader)  # endless stream
    torch.manual_seed(0)
    state = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), state)
    finite = build_train_loader(synthetic(), default_collate, G, 8, 0, 1, SEED, max_steps=5)
    assert len(finite) == 10


def test_loader_accepts_a_matching_position_dataset() -> None:
    wrapped = PositionDataset(synthetic(), G, SEED)
    loader = build_train_loader(wrapped, default_collate, G, 4, 0, 2, SEED, max_steps=1)
    assert loader.dataset is wrapped
    with pytest.raises(ValueError, match=r"seed 7.*asked for 16 and 8"):
        build_train_loader(wrapped, default_collate, G, 4, 0, 2, SEED + 1)
    with pytest.raises(ValueError, match=r"data\.batch_size \(3\)"):
        build_train_loader(synthetic(), default_collate, G, 3, 0, 2, SEED)


def test_build_dataset_dispatch(tmp_path) -> None:
    train = build_dataset("synthetic", "", True, None)
    val = build_dataset("synthetic", "", False, None, num_samples=10, num_classes=3)
    assert isinstance(train, SyntheticImages) and len(train) == 2048 and len(val) == 10
    assert train.num_classes == 10 and val.targets.tolist() == [i % 3 for i in range(10)]
    assert not torch.equal(train[0][0], build_dataset("synthetic", "", False, None)[0][0])
    for split in ("train", "val"):
        os.makedirs(tmp_path / split / "cls")
        Image.new("RGB", (4, 4)).save(tmp_path / split / "cls" / "a.png")
    folder = build_dataset("image_folder", str(tmp_path), False, None)
    assert isinstance(folder, ImageFolder) and folder.root == os.path.join(tmp_path, "val")
    with pytest.raises(ValueError, match=r"data\.dataset must be one of .*got 'imagenet'"):
        build_dataset("imagenet", "", True, None)
    with pytest.raises(ValueError, match="needs a root folder"):
        build_dataset("image_folder", "", True, None)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nope" / "train"))):
        build_dataset("image_folder", str(tmp_path / "nope"), True, None)
    with pytest.raises(ValueError, match="synthetic dataset only, not 'fashion_mnist'"):
        build_dataset("fashion_mnist", "", True, None, num_samples=3)
    with pytest.raises(ValueError, match="load_seconds apply to the synthetic dataset only"):
        build_dataset("image_folder", str(tmp_path), True, None, load_seconds=0.1)
    assert default_root("fashion_mnist") == DEBIAN_ROOT
    assert default_root("image_folder") == ""
    with pytest.raises(ValueError, match=r"data\.dataset"):
        default_root("cifar")


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz")),
    reason=f"Debian package dataset-fashion-mnist not installed (no files in {DEBIAN_ROOT})",
)
def test_fashion_mnist_through_the_loader() -> None:
    tf = build_train_transform(28, mean=(0.286,), std=(0.353,))
    ds = build_dataset("fashion_mnist", "", False, tf)
    assert isinstance(ds, FashionMNIST) and len(ds) == 10000
    imgs, labels, positions = next(iter(build_train_loader(ds, default_collate, 64, 32, 1, 2, 0)))
    assert imgs.shape == (32, 1, 28, 28) and positions.tolist() == list(range(32, 64))
    assert labels.min() >= 0 and labels.max() <= 9


def test_synthetic_config_reaches_both_splits() -> None:
    synthetic = ["data.dataset=synthetic", "data.synthetic_size=12", "data.synthetic_classes=4"]
    data = load_config(None, [*synthetic, "data.synthetic_load_s=0.25"]).data
    for train, size in ((True, 12), (False, 512)):
        ds = build_dataset_from_config(data, train, None)
        assert (len(ds), ds.num_classes, ds.load_seconds) == (size, 4, 0.25)
