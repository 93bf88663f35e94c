"""Datasets by name, the position-addressed training dataset and the training DataLoader.

The trainer reads samples by global position (see ``ijepa_ds.data.sampler`` for the contract):
``PositionDataset`` turns a position into ``(img, label, position)`` with an augmentation that
depends on ``(seed, position)`` alone, and ``build_train_loader`` feeds it this rank's
micro-batches from ``GlobalPositionSampler``. A resumed run therefore sees the same samples and
the same crops as an uninterrupted one, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ijepa_ds.data.fashion_mnist import DEBIAN_ROOT, FashionMNIST
from ijepa_ds.data.image_folder import ImageFolder
from ijepa_ds.data.sampler import GlobalPositionSampler, PositionMap, mix_seed
from ijepa_ds.data.synthetic import SyntheticImages

DATASET_KINDS = ("fashion_mnist", "image_folder", "synthetic")
SAMPLE_TAG = 0x53414D50  # ASCII "SAMP": the per-sample augmentation seed stream.
LOADER_TAG = 0x4C4F4144  # ASCII "LOAD": the DataLoader's own generator (worker base seeds).
SYNTHETIC_SIZES = {True: 2048, False: 512}


def sample_seed(seed: int, position: int) -> int:
    """Seed of torch's RNG while sample ``position`` is transformed: ``mix_seed(seed, SAMPLE_TAG,
    position)``."""
    return mix_seed(seed, SAMPLE_TAG, position)


class PositionDataset(Dataset):
    """Wraps a dataset of ``(img_tensor, label)``; item ``p`` is ``(img, label, p)``.

    The base index of position ``p`` is ``perm_e[p % (I * G)]`` (see ``PositionMap``), and the
    base ``__getitem__`` runs with torch's CPU RNG seeded to ``sample_seed(seed, p)`` inside
    ``torch.random.fork_rng``, so the random crop is a pure function of ``(seed, p)`` and the
    caller's global RNG state is left as it was. Transforms must draw their randomness from
    torch (all of torchvision's and ours do).
    """

    def __init__(self, base_dataset: Dataset, global_batch_size: int, seed: int) -> None:
        self.base = base_dataset
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.position_map = PositionMap(len(base_dataset), global_batch_size, seed)
        self.dataset_size = self.position_map.dataset_size
        self.samples_per_epoch = self.position_map.samples_per_epoch

    def __getitem__(self, position: int) -> tuple[Any, int, int]:
        position = int(position)
        index = self.position_map.index_of(position)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, position))
            img, label = self.base[index]
        return img, int(label), position

    def load_stats(self) -> dict[str, int]:
        """The base dataset's bad-image counters (``ImageFolder.load_stats``), else ``{}``."""
        stats = getattr(self.base, "load_stats", None)
        return stats() if callable(stats) else {}


def build_train_loader(
    dataset: Dataset,
    collate_fn: Callable[[list], Any],
    global_batch_size: int,
    micro_batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    start_step: int = 0,
    max_steps: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = True,
    persistent_workers: bool = False,
    prefetch_factor: int | None = 2,
) -> DataLoader:
    """DataLoader yielding ``collate_fn([(img, label, position)] * b)`` for each micro-batch.

    ``dataset`` is a base dataset of ``(img, label)`` (wrapped in ``PositionDataset`` here) or
    an existing ``PositionDataset`` with the same ``global_batch_size`` and ``seed``. Batches
    come from ``GlobalPositionSampler`` starting at optimizer step ``start_step``;
    ``max_steps`` is the absolute end step (``None``: endless). Memory is pinned only when CUDA
    is available; ``persistent_workers`` and ``prefetch_factor`` apply only with workers.
    """
    if isinstance(dataset, PositionDataset):
        if (dataset.global_batch_size, dataset.seed) != (global_batch_size, seed):
            raise ValueError(
                f"PositionDataset built with global batch {dataset.global_batch_size} and seed "
                f"{dataset.seed}, loader asked for {global_batch_size} and {seed}"
            )
        positions = dataset
    else:
        positions = PositionDataset(dataset, global_batch_size, seed)
    sampler = GlobalPositionSampler(
        positions.dataset_size,
        global_batch_size,
        micro_batch_size,
        rank,
        world_size,
        seed,
        start_step=start_step,
        max_steps=max_steps,
    )
    with_workers = num_workers > 0
    # Worker base seeds come from this generator rather than the global RNG, so creating an
    # iterator leaves the training process's RNG stream untouched.
    generator = torch.Generator().manual_seed(mix_seed(seed, LOADER_TAG, rank))
    return DataLoader(
        positions,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=bool(pin_memory and torch.cuda.is_available()),
        persistent_workers=bool(persistent_workers and with_workers),
        prefetch_factor=prefetch_factor if with_workers else None,
        generator=generator,
    )


def build_dataset_from_config(data: Any, train: bool, transform: Callable | None) -> Dataset:
    """The dataset split that a ``data`` config section (``config.DataConfig``) names: the one
    place that knows the synthetic dataset's settings. Its train split holds
    ``data.synthetic_size`` images, its held-out split the default eval size; both have
    ``data.synthetic_classes`` labels and take ``data.synthetic_load_s`` to load. Other datasets
    are read from ``data.root``."""
    if data.dataset == "synthetic":
        size = data.synthetic_size if train else None
        return build_dataset(
            "synthetic", "", train, transform, num_samples=size,
            num_classes=data.synthetic_classes, load_seconds=data.synthetic_load_s,
        )  # fmt: skip
    return build_dataset(data.dataset, data.root, train, transform)


def default_root(kind: str) -> str:
    """Where ``kind`` lives when no root is configured (``""`` where there is no default)."""
    _check_kind(kind)
    return DEBIAN_ROOT if kind == "fashion_mnist" else ""


def build_dataset(
    kind: str,
    root: str,
    train: bool,
    transform: Callable | None,
    *,
    num_samples: int | None = None,
    num_classes: int | None = None,
    load_seconds: float = 0.0,
) -> Dataset:
    """Dataset of ``(transform(PIL image), label)`` items by name.

    - ``"fashion_mnist"``: IDX files in ``root`` or ``root/FashionMNIST/raw`` (empty root: the
      Debian package folder).
    - ``"image_folder"``: ImageNet layout, ``root/train/<class>/...`` or ``root/val/<class>/...``.
    - ``"synthetic"``: ``SyntheticImages`` (``root`` ignored; ``num_samples`` defaults to 2048
      for train, 512 for eval, ``num_classes`` to 10; the eval split uses another seed; each
      item sleeps ``load_seconds``).
    """
    _check_kind(kind)
    if kind == "synthetic":
        size = num_samples if num_samples is not None else SYNTHETIC_SIZES[bool(train)]
        classes = num_classes if num_classes is not None else 10
        return SyntheticImages(
            size, num_classes=classes, seed=0 if train else 1, transform=transform,
            load_seconds=load_seconds,
        )  # fmt: skip
    if num_samples is not None or num_classes is not None or load_seconds:
        raise ValueError(
            "num_samples/num_classes/load_seconds apply to the synthetic dataset only, "
            f"not {kind!r}"
        )
    root = root or default_root(kind)
    if kind == "fashion_mnist":
        return FashionMNIST(root, train=train, transform=transform)
    if not root:
        raise ValueError("data.dataset 'image_folder' needs a root folder, got an empty path")
    return ImageFolder(os.path.join(root, "train" if train else "val"), transform=transform)


def _check_kind(kind: str) -> None:
    if kind not in DATASET_KINDS:
        raise ValueError(f"data.dataset must be one of {list(DATASET_KINDS)}, got {kind!r}")
