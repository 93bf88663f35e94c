"""Reference training augmentation and evaluation transform."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ijepa_ds.data.transforms import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomGaussianBlur,
    build_eval_transform,
    build_train_transform,
)


def rgb_image(size: int = 48, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def seeded(transform, img: Image.Image, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(img)


def test_output_channels_follow_mean_and_std() -> None:
    grey = Image.fromarray(np.full((30, 30), 77, np.uint8))
    rgb_tf = build_train_transform(16)
    grey_tf = build_train_transform(16, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    assert rgb_tf(rgb_image()).shape == (3, 16, 16)
    assert rgb_tf(grey).shape == (3, 16, 16)
    assert grey_tf(grey).shape == (1, 16, 16)
    assert grey_tf(rgb_image()).shape == (1, 16, 16)
    eval_grey = build_eval_transform(16, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    assert eval_grey(grey).shape == (1, 16, 16)


def test_full_scale_crop_then_normalize() -> None:
    # scale (1, 1) on a constant image leaves the pixel values; only Normalize changes them.
    img = Image.new("RGB", (32, 32), (10, 128, 250))
    out = seeded(build_train_transform(32, crop_scale=(1.0, 1.0)), img, 0)
    expected = (torch.tensor([10, 128, 250]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    torch.testing.assert_close(out[:, 5, 7], expected)


def test_reference_defaults() -> None:
    tf = build_train_transform(224)
    crops = [t for t in tf.transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(crops) == 1
    assert crops[0].scale == (0.3, 1.0)
    assert crops[0].interpolation == T.InterpolationMode.BILINEAR
    # Reference configs: no flip, no colour distortion, no blur.
    img = rgb_image()
    plain = [seeded(tf, img, s) for s in range(6)]
    bare = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.3, 1.0)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    for s, out in enumerate(plain):
        torch.testing.assert_close(out, seeded(bare, img, s), rtol=0, atol=0)


def test_crops_depend_on_seed_only_through_torch() -> None:
    tf = build_train_transform(
        24, horizontal_flip=True, color_distortion_strength=0.5, gaussian_blur=True
    )
    img = rgb_image()
    first = seeded(tf, img, 11)
    random.seed(999)  # Python's and NumPy's RNGs must play no part
    np.random.seed(999)
    torch.testing.assert_close(seeded(tf, img, 11), first, rtol=0, atol=0)
    assert not torch.equal(seeded(tf, img, 12), first)


def test_horizontal_flip_option() -> None:
    img = rgb_image(24)
    base = build_train_transform(24, crop_scale=(1.0, 1.0))
    flip = build_train_transform(24, crop_scale=(1.0, 1.0), horizontal_flip=True)
    unflipped = base(img)
    outs = [seeded(flip, img, s) for s in range(12)]
    n_flipped = sum(torch.equal(o, unflipped.flip(-1)) for o in outs)
    n_same = sum(torch.equal(o, unflipped) for o in outs)
    assert n_flipped > 0 and n_same > 0 and n_flipped + n_same == 12


def test_color_distortion_option() -> None:
    img = rgb_image(24)
    base = build_train_transform(24, crop_scale=(1.0, 1.0))
    jitter = build_train_transform(24, crop_scale=(1.0, 1.0), color_distortion_strength=1.0)
    outs = [seeded(jitter, img, s) for s in range(20)]
    assert sum(not torch.allclose(o, base(img)) for o in outs) >= 10
    # RandomGrayscale (p=0.2) makes the three un-normalised channels equal for some seeds.
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    raw = [o * std + mean for o in outs]
    assert any(
        torch.allclose(r[0], r[1], atol=1e-5) and torch.allclose(r[1], r[2], atol=1e-5) for r in raw
    )


def test_gaussian_blur_smooths_and_respects_probability() -> None:
    img = rgb_image(32)
    torch.manual_seed(0)
    blurred = np.asarray(RandomGaussianBlur(p=1.0, radius_min=1.5, radius_max=2.0)(img), float)
    assert (
        np.abs(np.diff(blurred, axis=1)).mean()
        < 0.5 * np.abs(np.diff(np.asarray(img, float), axis=1)).mean()
    )
    assert RandomGaussianBlur(p=0.0)(img) is img
    torch.manual_seed(0)
    hits = sum(RandomGaussianBlur(p=0.5)(img) is not img for _ in range(200))
    assert 70 < hits < 130


def test_eval_transform_resizes_and_center_crops() -> None:
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[24:40, 40:56] = 255  # a white square around the centre
    img = Image.fromarray(arr)
    tf = build_eval_transform(28, resize_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    out = tf(img)
    assert out.shape == (3, 28, 28)
    torch.testing.assert_close(tf(img), out, rtol=0, atol=0)
    assert out[:, 14, 14].min() > 0.95 and out[:, 0, 0].max() < 0.05
    default = build_eval_transform(224)
    assert [t.size for t in default.transforms if isinstance(t, T.Resize)] == [256]


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        build_train_transform(16, crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="mean has 3 values but std has 1"):
        build_train_transform(16, mean=IMAGENET_MEAN, std=(0.2,))
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        build_eval_transform(16, mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ValueError, match="smaller than crop_size"):
        build_eval_transform(16, resize_size=8)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
