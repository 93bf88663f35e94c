"""ImageNet-layout image folders (``<root>/<class>/**/<image>``) that survive bad files.

Real image collections hold a few files that do not decode as plain 8-bit RGB: CMYK or
palette JPEG/PNG/GIF, RGBA, 16-bit grey PNG, and outright broken files (zero bytes, truncated
or corrupt data, something else saved with an image extension). Decodable oddities are
converted to ``"RGB"`` (or ``"L"`` for grey sources, so a 1-channel pipeline keeps them grey);
undecodable files are skipped by substituting the next readable index, so every sample
position still yields an image. Both events are counted in shared memory that the main process
can read while DataLoader workers load (``ImageFolder.load_stats``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".pbm",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
COUNTERS = ("skipped_empty_file", "skipped_not_an_image", "skipped_corrupt", "converted")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImageError(Exception):
    """A file that cannot be decoded; ``reason`` is one of the ``skipped_*`` counters."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason} ({detail})")
        self.path = path
        self.reason = reason


def _to_rgb_or_grey(img: Image.Image) -> tuple[Image.Image, bool]:
    """Return ``(image in "RGB" or "L", whether a non-trivial conversion happened)``."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img.copy(), False
    if mode == "1":
        return img.convert("L"), True
    if mode in _SIXTEEN_BIT_MODES:
        # convert("L") would clip every value above 255 to white; keep the top 8 bits instead.
        arr = np.asarray(img).astype(np.int64)
        return Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8)), True
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8)), True
    if mode == "P" and "transparency" not in img.info:
        return img.convert("RGB"), True
    if mode in ("RGBA", "LA", "PA", "RGBa", "La", "P"):
        # Show transparent pixels on white, as a viewer would; their stored colour is arbitrary.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), True
    return img.convert("RGB"), True


def load_image(path: str) -> tuple[Image.Image, bool]:
    """Decode ``path`` fully; return ``(PIL image in "RGB" or "L", converted)``.

    Raises ``BadImageError`` for zero-byte files, files PIL does not recognise and files that
    fail to decode (truncated or corrupt data).
    """
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # Image.open only parses the header; truncation shows up here.
            return _to_rgb_or_grey(img)
    except UnidentifiedImageError as err:
        empty = os.path.getsize(path) == 0
        reason = "skipped_empty_file" if empty else "skipped_not_an_image"
        raise BadImageError(path, reason, str(err)) from err
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        # PIL's decoders report malformed data through all of these exception types.
        raise BadImageError(path, "skipped_corrupt", f"{type(err).__name__}: {err}") from err


def _scan(root: str, extensions: tuple[str, ...]) -> tuple[list[str], list[bytes], list[int]]:
    """Class names (sorted sub-folders) and the relative paths and labels of their images."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist or is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(
            f"image folder {root!r} has no class sub-folders (expected <root>/<class>/<image>)"
        )
    paths: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for folder, dirs, files in os.walk(os.path.join(root, name), followlinks=True):
            dirs.sort()
            for file in sorted(files):
                if file.startswith(".") or not file.lower().endswith(extensions):
                    continue
                paths.append(os.fsencode(os.path.relpath(os.path.join(folder, file), root)))
                labels.append(label)
    if not paths:
        raise ValueError(f"image folder {root!r} holds no files ending in {list(extensions)}")
    return classes, paths, labels


class ImageFolder(Dataset):
    """Images under ``<root>/<class>/``; items are ``(transform(PIL image), class index)``.

    Classes are the sorted sub-folder names. Paths are packed into one byte buffer rather than a
    list of ``str`` so that forked DataLoader workers do not copy them page by page through
    reference counting. Without a transform the image comes back as a float tensor
    ``[C, H, W]`` in ``[0, 1]`` (``C`` = 3, or 1 for grey files).
    """

    def __init__(
        self,
        root: str,
        transform: Callable[[Image.Image], Any] | None = None,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
    ) -> None:
        classes, paths, labels = _scan(root, tuple(e.lower() for e in extensions))
        self.root = root
        self.transform = transform
        self.classes = classes
        self.class_to_idx = {name: i for i, name in enumerate(classes)}
        self.targets = np.asarray(labels, dtype=np.int64)
        lengths = np.fromiter((len(p) for p in paths), dtype=np.int64, count=len(paths))
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._blob = np.frombuffer(b"".join(paths), dtype=np.uint8)
        self._counters = multiprocessing.Array("q", len(COUNTERS))
        # Per process: index -> skip reason of files already found unreadable (not re-decoded).
        self._bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.targets)

    def path_of(self, index: int) -> str:
        """Absolute path of sample ``index``."""
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.path.join(self.root, os.fsdecode(self._blob[start:end].tobytes()))

    def load_stats(self) -> dict[str, int]:
        """Event counts over all processes: skips by reason, ``skipped`` in total, ``converted``.

        Each load counts once, so a bad file met in two epochs counts twice.
        """
        with self._counters.get_lock():
            values = list(self._counters)
        stats = dict(zip(COUNTERS, values, strict=True))
        stats["skipped"] = sum(v for k, v in stats.items() if k.startswith("skipped_"))
        return stats

    def _count(self, name: str) -> None:
        with self._counters.get_lock():
            self._counters[COUNTERS.index(name)] += 1

    def _load(self, index: int) -> tuple[Image.Image, int]:
        """First readable image at ``index, index + 1, ...`` (wrapping) and its label."""
        n = len(self)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                self._count(self._bad[i])
                continue
            try:
                img, converted = load_image(self.path_of(i))
            except BadImageError as err:
                self._bad[i] = err.reason
                self._count(err.reason)
                logger.warning("skipping unreadable image %s", err)
                continue
            if converted:
                self._count("converted")
            return img, int(self.targets[i])
        raise RuntimeError(f"no readable image in image folder {self.root!r}")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, label = self._load(index)
        if self.transform is None:
            return to_tensor(img), label
        return self.transform(img), label
