"""Image transforms: the reference I-JEPA training augmentation and an evaluation transform.

Training (reference ``make_transforms``): RandomResizedCrop(crop_size, scale=crop_scale,
bilinear) -> optional horizontal flip -> optional colour distortion (jitter with probability 0.8,
grey with probability 0.2) -> optional Gaussian blur (probability 0.5, radius U(0.1, 2.0)) ->
ToTensor -> Normalize(mean, std). The reference configs turn flip, colour and blur off.

Every random draw goes through torch's global RNG, so ``PositionDataset`` can make a sample's
augmentation a pure function of ``(seed, position)`` by seeding that RNG around the call.
The channel count follows ``mean``/``std``: one value keeps (or makes) the image grey
``[1, H, W]``, three values make it RGB ``[3, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pixel statistics of the Fashion-MNIST training set (60000 images, values in [0, 1]).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class ConvertMode:
    """Convert a PIL image to ``"L"`` (grey) or ``"RGB"``; a no-op when already there."""

    def __init__(self, mode: str) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"ConvertMode supports 'L' and 'RGB', got {mode!r}")
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


class RandomGaussianBlur:
    """With probability ``p``, blur a PIL image with a radius drawn from U(radius_min, radius_max).

    Same distribution as the reference's PIL blur, but drawn from torch's RNG (the reference
    mixes in Python's ``random``), so seeding torch alone fixes the outcome.
    """

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return img
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


def color_distortion(strength: float) -> T.Compose:
    """Reference colour distortion: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) w.p. 0.8, grey w.p. 0.2."""
    jitter = T.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
    return T.Compose([T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=0.2)])


def _mode_for(mean: Sequence[float], std: Sequence[float]) -> str:
    """``"L"`` for one-channel statistics, ``"RGB"`` for three; anything else is an error."""
    if len(mean) != len(std):
        raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
    if len(mean) == 1:
        return "L"
    if len(mean) == 3:
        return "RGB"
    raise ValueError(f"mean/std must have 1 (grey) or 3 (RGB) values, got {len(mean)}")


def build_train_transform(
    crop_size: int,
    crop_scale: tuple[float, float] = (0.3, 1.0),
    horizontal_flip: bool = False,
    color_distortion_strength: float | None = None,
    gaussian_blur: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """The reference training augmentation; PIL image in, float tensor ``[C, crop, crop]`` out.

    ``color_distortion_strength`` is the reference ``color_jitter_strength``; ``None`` means the
    reference's ``use_color_distortion: false``. ``C`` is ``len(mean)`` (1 or 3).
    """
    lo, hi = crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"data.crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
    ops: list = [
        ConvertMode(_mode_for(mean, std)),
        T.RandomResizedCrop(crop_size, scale=(lo, hi), interpolation=T.InterpolationMode.BILINEAR),
    ]
    if horizontal_flip:
        ops.append(T.RandomHorizontalFlip())
    if color_distortion_strength is not None:
        ops.append(color_distortion(color_distortion_strength))
    if gaussian_blur:
        ops.append(RandomGaussianBlur(p=0.5))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def build_eval_transform(
    crop_size: int,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Deterministic evaluation transform for linear probe / kNN: ``[C, crop, crop]`` tensor.

    Resize the short side to ``resize_size`` (default ``round(crop_size * 256 / 224)``, the
    usual ImageNet ratio), center-crop ``crop_size``, ToTensor, Normalize.
    """
    if resize_size is None:
        resize_size = round(crop_size * 256 / 224)
    if resize_size < crop_size:
        raise ValueError(f"resize_size ({resize_size}) is smaller than crop_size ({crop_size})")
    return T.Compose(
        [
            ConvertMode(_mode_for(mean, std)),
            T.Resize(resize_size, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(crop_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
