"""Deterministic synthetic images with learnable labels, for tests and smoke runs.

Sample ``i`` has label ``i % num_classes`` and shows a sinusoidal grating whose orientation,
frequency and colour depend on the label, with a per-sample phase and Gaussian pixel noise drawn
from a NumPy generator seeded with ``(seed, i)``: the same ``(seed, i)`` always gives the same
image, in any process and any order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

_MASK64 = (1 << 64) - 1


class SyntheticImages(Dataset):
    """``num_samples`` images ``image_size`` x ``image_size`` with ``channels`` in {1, 3}.

    Items are ``(transform(PIL image), label)``; without a transform the image is a float
    tensor ``[channels, image_size, image_size]`` in ``[0, 1]``. Each item takes at least
    ``load_seconds`` (a sleep, as reading from slow storage would), 0 by default.
    """

    def __init__(
        self,
        num_samples: int = 1024,
        image_size: int = 64,
        num_classes: int = 10,
        channels: int = 3,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
        noise_std: float = 0.08,
        load_seconds: float = 0.0,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"synthetic images have 1 or 3 channels, got {channels}")
        if load_seconds < 0:
            raise ValueError(f"load_seconds must be >= 0, got {load_seconds}")
        if num_samples <= 0 or image_size <= 0 or num_classes <= 0:
            raise ValueError(
                f"num_samples ({num_samples}), image_size ({image_size}) and num_classes "
                f"({num_classes}) must be positive"
            )
        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.channels = channels
        self.seed = seed
        self.transform = transform
        self.noise_std = noise_std
        self.load_seconds = load_seconds
        self.targets = np.arange(num_samples, dtype=np.int64) % num_classes

    def __len__(self) -> int:
        return self.num_samples

    def _class_colour(self, label: int) -> np.ndarray:
        """Per-channel grating amplitude ``[channels]`` in [0.2, 1]: a hue per class."""
        if self.channels == 1:
            return np.ones(1)
        hue = 2 * math.pi * label / self.num_classes
        return 0.6 + 0.4 * np.cos(hue + 2 * math.pi * np.arange(3) / 3)

    def image_array(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 ``[H, W, channels]``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        label = int(self.targets[index])
        rng = np.random.default_rng([self.seed & _MASK64, index])
        angle = math.pi * label / self.num_classes
        cycles = 2.0 + (label % 3)
        phase = rng.uniform(0.0, 2 * math.pi)
        coords = np.linspace(0.0, 1.0, self.image_size, endpoint=False)
        y, x = np.meshgrid(coords, coords, indexing="ij")
        wave = np.sin(2 * math.pi * cycles * (x * math.cos(angle) + y * math.sin(angle)) + phase)
        img = 0.5 + 0.35 * wave[..., None] * self._class_colour(label)
        img = img + rng.normal(0.0, self.noise_std, size=img.shape)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if self.load_seconds:
            time.sleep(self.load_seconds)
        arr = self.image_array(index)
        img = Image.fromarray(arr[..., 0] if self.channels == 1 else arr)
        label = int(self.targets[index])
        if self.transform is None:
            return to_tensor(img), label
        return self.transform(img), label
