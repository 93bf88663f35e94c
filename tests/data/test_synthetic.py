"""Synthetic images: determinism per (seed, index) and labels that can be learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ijepa_ds.data.synthetic import SyntheticImages
from ijepa_ds.data.transforms import build_train_transform


def test_same_seed_and_index_give_the_same_image() -> None:
    a, b = SyntheticImages(40, image_size=16, seed=5), SyntheticImages(40, image_size=16, seed=5)
    img_late, label_late = a[17]
    for i in (3, 0, 39):  # other reads in between must not matter
        a[i]
    img_again, label_again = b[17]
    assert torch.equal(img_late, img_again) and label_late == label_again == 17 % 10
    other_seed = SyntheticImages(40, image_size=16, seed=6)[17][0]
    assert not torch.equal(img_late, other_seed)
    assert not torch.equal(a[17][0], a[27][0])  # same class, different sample


def test_shapes_labels_and_range() -> None:
    rgb = SyntheticImages(30, image_size=20, num_classes=7, channels=3)
    grey = SyntheticImages(30, image_size=20, num_classes=7, channels=1)
    img, _ = rgb[4]
    assert img.shape == (3, 20, 20) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert grey[4][0].shape == (1, 20, 20)
    assert [rgb[i][1] for i in range(30)] == [i % 7 for i in range(30)]
    assert rgb.targets.tolist() == [i % 7 for i in range(30)]
    tf = build_train_transform(12, mean=(0.5,), std=(0.5,))
    assert SyntheticImages(8, image_size=20, transform=tf)[0][0].shape == (1, 12, 12)


def test_labels_are_learnable_from_pixels() -> None:
    # The grating orientation/frequency is a class signal independent of the random phase:
    # nearest class centroid on the Fourier magnitude classifies held-out samples.
    ds = SyntheticImages(400, image_size=32, num_classes=10, channels=1, seed=0)
    feats = np.stack(
        [np.abs(np.fft.rfft2(ds.image_array(i)[..., 0] / 255.0)).ravel() for i in range(len(ds))]
    )
    labels = ds.targets
    train, test = np.arange(200), np.arange(200, 400)
    centroids = np.stack([feats[train][labels[train] == c].mean(0) for c in range(10)])
    dists = ((feats[test][:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (dists.argmin(1) == labels[test]).mean()
    assert accuracy > 0.9


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        SyntheticImages(10, channels=2)
    with pytest.raises(ValueError, match="must be positive"):
        SyntheticImages(0)
    with pytest.raises(IndexError):
        SyntheticImages(10)[10]


def test_load_seconds_sleeps_per_item_and_leaves_the_image_alone(monkeypatch) -> None:
    slept = []
    monkeypatch.setattr("ijepa_ds.data.synthetic.time.sleep", slept.append)
    slow = SyntheticImages(4, image_size=8, load_seconds=0.3)
    items = [slow[i][0] for i in range(4)]
    assert slept == [0.3] * 4
    fast = SyntheticImages(4, image_size=8)
    assert all(torch.equal(a, fast[i][0]) for i, a in enumerate(items))
    assert slept == [0.3] * 4  # the default loads without sleeping
    with pytest.raises(ValueError, match="load_seconds must be >= 0"):
        SyntheticImages(4, load_seconds=-1)
