"""ImageNet-layout folders: layout, every kind of bad image, and the shared counters."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ijepa_ds.data.fashion_mnist import DEBIAN_ROOT, FashionMNIST
from ijepa_ds.data.image_folder import BadImageError, ImageFolder, load_image
from ijepa_ds.data.synthetic import SyntheticImages
from ijepa_ds.data.transforms import build_train_transform


def write_good_tree(root, per_class: int = 3) -> dict[str, np.ndarray]:
    """Classes bird/cat/dog of lossless PNGs from synthetic arrays; returns path -> array."""
    synth = SyntheticImages(3 * per_class, image_size=12, num_classes=3)
    written = {}
    for i in range(len(synth)):
        name = ("bird", "cat", "dog")[int(synth.targets[i])]
        os.makedirs(os.path.join(root, name), exist_ok=True)
        path = os.path.join(root, name, f"img_{i:03d}.png")
        Image.fromarray(synth.image_array(i)).save(path)
        written[path] = synth.image_array(i)
    return written


def write_odd_images(folder) -> dict[str, str]:
    """One file per awkward kind; returns file name -> expected outcome."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(os.path.join(folder, "ok.jpg"), quality=90)
    jpeg = Path(folder, "ok.jpg").read_bytes()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    with open(os.path.join(folder, "corrupt.jpg"), "wb") as f:
        f.write(jpeg[:200] + b"\xff" * 400 + jpeg[600:])
    open(os.path.join(folder, "zero.jpg"), "wb").close()
    with open(os.path.join(folder, "notes.jpg"), "w") as f:
        f.write("this is a text file with an image extension")
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(os.path.join(folder, "cmyk.jpg"))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3] = 200, 255  # top half opaque red-ish, bottom transparent
    Image.fromarray(rgba).save(os.path.join(folder, "rgba.png"))
    Image.fromarray(noise[:8, :8]).convert("P").save(os.path.join(folder, "palette.png"))
    Image.fromarray(noise[:8, :8]).convert("P").save(
        os.path.join(folder, "palette_t.png"), transparency=0
    )
    Image.fromarray(np.full((8, 8), 0x8000, np.uint16)).save(os.path.join(folder, "grey16.png"))
    Image.fromarray(noise[:1, :1]).save(os.path.join(folder, "tiny.png"))
    return {
        "ok.jpg": "ok",
        "truncated.jpg": "skipped_corrupt",
        "corrupt.jpg": "skipped_corrupt",
        "zero.jpg": "skipped_empty_file",
        "notes.jpg": "skipped_not_an_image",
        "cmyk.jpg": "converted",
        "rgba.png": "converted",
        "palette.png": "converted",
        "palette_t.png": "converted",
        "grey16.png": "converted",
        "tiny.png": "ok",
    }


def test_layout_labels_and_pixels(tmp_path) -> None:
    written = write_good_tree(tmp_path)
    (tmp_path / "cat" / "readme.txt").write_text("not listed: wrong extension")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"")
    os.makedirs(tmp_path / "dog" / "nested")
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "dog" / "nested" / "deep.PNG")
    ds = ImageFolder(str(tmp_path))
    assert ds.classes == ["bird", "cat", "dog"]
    assert len(ds) == 10
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    for i in range(len(ds)):
        img, label = ds[i]
        path = ds.path_of(i)
        class_name = os.path.relpath(path, tmp_path).split(os.sep)[0]
        assert label == ds.class_to_idx[class_name]
        expected = written.get(path, np.full((5, 5, 3), (1, 2, 3), np.uint8))
        torch.testing.assert_close(img, torch.from_numpy(expected).permute(2, 0, 1) / 255)
    assert ds.load_stats()["skipped"] == 0


def test_each_awkward_kind_loads_or_is_classified(tmp_path) -> None:
    expected = write_odd_images(tmp_path)
    for name, outcome in expected.items():
        path = os.path.join(tmp_path, name)
        if outcome.startswith("skipped"):
            with pytest.raises(BadImageError) as info:
                load_image(path)
            assert info.value.reason == outcome and path in str(info.value)
            continue
        img, converted = load_image(path)
        assert img.mode in ("RGB", "L")
        assert converted == (outcome == "converted"), name
    cmyk, _ = load_image(os.path.join(tmp_path, "cmyk.jpg"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0)) == (255, 0, 255)
    rgba, _ = load_image(os.path.join(tmp_path, "rgba.png"))
    assert rgba.getpixel((0, 0)) == (200, 0, 0) and rgba.getpixel((0, 7)) == (255, 255, 255)
    grey16, _ = load_image(os.path.join(tmp_path, "grey16.png"))
    assert grey16.mode == "L" and grey16.getpixel((3, 3)) == 128  # top 8 bits, not clipped
    palette, _ = load_image(os.path.join(tmp_path, "palette.png"))
    source = Image.open(os.path.join(tmp_path, "palette.png")).convert("RGB")
    assert np.array_equal(np.asarray(palette), np.asarray(source))
    tiny, _ = load_image(os.path.join(tmp_path, "tiny.png"))
    assert tiny.size == (1, 1)


def test_bad_images_are_skipped_and_counted(tmp_path) -> None:
    expected = write_odd_images(tmp_path / "mixed")
    write_good_tree(tmp_path, per_class=1)  # classes bird/cat/dog + mixed
    tf = build_train_transform(16, crop_scale=(0.5, 1.0))
    ds = ImageFolder(str(tmp_path), transform=tf)
    n = len(ds)
    outcome = [expected.get(os.path.basename(ds.path_of(i)), "ok") for i in range(n)]
    assert outcome[-1] == "skipped_empty_file"  # zero.jpg sorts last: substitution wraps
    visits = dict.fromkeys(
        ("skipped_corrupt", "skipped_empty_file", "skipped_not_an_image", "converted"), 0
    )
    for i in range(n):
        img, label = ds[i]
        assert img.shape == (3, 16, 16) and torch.isfinite(img).all()
        # The slot of a bad file goes to the next readable file in index order (wrapping);
        # every bad file met on the way counts once.
        j = i
        while outcome[j % n].startswith("skipped"):
            visits[outcome[j % n]] += 1
            j += 1
        assert label == int(ds.targets[j % n])
        visits["converted"] += outcome[j % n] == "converted"
    stats = ds.load_stats()
    assert (
        visits["skipped_empty_file"] == 2
    )  # zero.jpg: as itself, and passed over from truncated.jpg
    for reason, count in visits.items():
        assert stats[reason] == count, reason
    assert stats["skipped"] == sum(v for k, v in visits.items() if k.startswith("skipped_"))
    # corrupt.jpg's slot goes to grey16.png, a conversion: 5 converted files, 6 loads.
    assert stats["converted"] == 6


def test_counters_cover_dataloader_workers(tmp_path) -> None:
    expected = write_odd_images(tmp_path / "mixed")
    ds = ImageFolder(str(tmp_path), transform=build_train_transform(8))
    good = [
        i
        for i in range(len(ds))
        if not expected[os.path.basename(ds.path_of(i))].startswith("skipped")
    ]
    # Read only the good files plus each bad one exactly once, spread over two workers.
    bad = [i for i in range(len(ds)) if i not in good]
    loader = DataLoader(ds, batch_size=2, sampler=good + bad, num_workers=2)
    assert sum(len(labels) for _, labels in loader) == len(ds)
    stats = ds.load_stats()  # read in the main process, written by the workers
    assert stats["converted"] >= 5
    assert stats["skipped_empty_file"] >= 1 and stats["skipped_not_an_image"] >= 1
    assert stats["skipped_corrupt"] >= 2


def test_missing_or_empty_folders_fail_up_front(tmp_path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=rf"{re.escape(missing)}.*does not exist"):
        ImageFolder(missing)
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*no class sub-folders"):
        ImageFolder(str(tmp_path))
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*holds no files ending in"):
        ImageFolder(str(tmp_path))


def test_folder_of_only_bad_files_raises_on_read(tmp_path) -> None:
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.jpg").write_bytes(b"")
    (tmp_path / "cls" / "b.png").write_text("text")
    ds = ImageFolder(str(tmp_path))
    with pytest.raises(RuntimeError, match="no readable image"):
        ds[0]


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz")),
    reason=f"Debian package dataset-fashion-mnist not installed (no files in {DEBIAN_ROOT})",
)
def test_tree_written_from_fashion_mnist(tmp_path) -> None:
    fm = FashionMNIST(DEBIAN_ROOT, train=False)
    picks = [int(i) for i in torch.arange(0, 10000, 500)]
    for i in picks:
        folder = tmp_path / f"class_{int(fm.targets[i])}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(fm.images[i]).save(folder / f"{i:05d}.png")
    ds = ImageFolder(str(tmp_path))
    assert len(ds) == len(picks)
    for k in range(len(ds)):
        i = int(os.path.basename(ds.path_of(k))[:5])
        img, label = ds[k]
        assert img.shape == (1, 28, 28)
        assert ds.classes[label] == f"class_{int(fm.targets[i])}"
        assert torch.equal(
            (img[0] * 255).round().to(torch.uint8), torch.from_numpy(fm.images[i].copy())
        )
