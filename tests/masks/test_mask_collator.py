"""MaskCollator: batch layout, masks tied to sample positions, safe inside DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ijepa_ds.masks import MaskCollator, MultiBlockMaskSampler, ReferenceMaskSampler


class _PositionedImages(Dataset):
    """Items (img [1, 28, 28], label, global position), as the data pipeline yields them."""

    def __init__(self, count: int) -> None:
        self.images = torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 10, 1000 + i


def _sampler() -> MultiBlockMaskSampler:
    return MultiBlockMaskSampler((7, 7), 8, seed=3, min_keep=4)


def test_collates_images_labels_positions_and_the_positions_masks():
    data = _PositionedImages(8)
    items = [data[i] for i in (5, 1, 7)]  # any order, as a sampler may shuffle
    imgs, labels, positions, masks_enc, masks_pred = MaskCollator(_sampler())(items)
    assert imgs.shape == (3, 1, 28, 28) and torch.equal(imgs[0], data.images[5])
    assert labels.dtype == torch.long and labels.tolist() == [5, 1, 7]
    assert positions.dtype == torch.long and positions.tolist() == [1005, 1001, 1007]
    expected_enc, expected_pred = _sampler()(np.array([1005, 1001, 1007]))
    for got, want in zip(masks_enc + masks_pred, expected_enc + expected_pred, strict=True):
        assert got.dtype == torch.long and got.shape[0] == 3 and torch.equal(got, want)


def test_pickled_collator_gives_identical_batches():
    collator = MaskCollator(ReferenceMaskSampler((16, 16), 4, seed=0))
    items = [(torch.zeros(3, 4, 4), 0, p) for p in (8, 9, 10, 11)]
    clone = pickle.loads(pickle.dumps(collator))
    for a, b in zip(collator(items)[3:], clone(items)[3:], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_worker_processes_collate_exactly_as_the_main_process():
    data = _PositionedImages(32)
    collator = MaskCollator(_sampler())
    loader = DataLoader(data, batch_size=4, num_workers=2, collate_fn=collator)
    for k, batch in enumerate(loader):
        expected = collator([data[i] for i in range(4 * k, 4 * k + 4)])
        assert torch.equal(batch[0], expected[0]) and torch.equal(batch[2], expected[2])
        for got, want in zip(batch[3] + batch[4], expected[3] + expected[4], strict=True):
            assert torch.equal(got, want)


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        MaskCollator(_sampler())([])


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
