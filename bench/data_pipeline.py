"""Data pipeline throughput (decode + transforms + mask collator) vs what the model consumes.

Run from the repository root (one process, one thread)::

    OMP_NUM_THREADS=1 python bench/data_pipeline.py --out bench/results/data_pipeline.md

Per configuration, on one core (``data.num_workers=0``, i.e. what one DataLoader worker does),
timed in this process's CPU time (one thread), which other jobs on a shared machine disturb
far less than wall time:
- dataset: ``__getitem__`` of the trainer's own dataset and reference transforms (JPEG decode
  for the image folder, RandomResizedCrop, normalisation);
- collator: ``MaskCollator`` (multi-block masks of the whole step + stacking);
- loader: the trainer's loader end to end (``build_train_loader``, as ``build_loader`` builds
  it);
- model: one single-process training step of the same student on the same batch (target
  forward, student forward + backward, AdamW, EMA; no DeepSpeed), i.e. what one core consumes.
The image-folder set is written once from Fashion-MNIST images, upscaled to 256x256 RGB JPEGs
(real ImageNet JPEGs are larger, about 400x350 on average, and decode more slowly).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common  # sets OMP_NUM_THREADS, puts the repo on sys.path
import numpy as np
import torch
from PIL import Image

from ijepa_ds.backend.param_groups import build_param_groups
from ijepa_ds.config import load_config
from ijepa_ds.data import build_train_loader, read_idx
from ijepa_ds.data.fashion_mnist import IMAGES_MAGIC
from ijepa_ds.loss import jepa_loss, make_targets
from ijepa_ds.masks import MaskCollator, build_mask_sampler_from_config
from ijepa_ds.train.target import TargetEncoder
from ijepa_ds.train.trainer import build_student, build_train_dataset

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def write_jpeg_folder(root: Path, count: int) -> None:
    """``count`` 256x256 RGB JPEGs from Fashion-MNIST images, in 10 class folders."""
    images = read_idx(FMNIST, IMAGES_MAGIC)[:count]
    for index, pixels in enumerate(images):
        folder = root / f"class_{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(np.asarray(pixels)).convert("RGB").resize((256, 256))
        img.save(folder / f"{index:05d}.jpg", quality=90)


def configs(jpeg_root: Path, batch: int) -> dict[str, list[str]]:
    vit = common.VIT_S16 + [f"data.batch_size={batch}", f"data.global_batch_size={batch}"]
    return {
        "fmnist_tiny (Fashion-MNIST IDX, 28 px)": [],
        "ViT-S/16, synthetic, 224 px": vit + ["data.crop_size=224", "data.synthetic_size=2048"],
        "ViT-S/16, JPEG folder, 224 px": vit
        + ["data.crop_size=224", "data.dataset=image_folder", f"data.root={jpeg_root}"]
        + ["data.normalize_mean=[0.485,0.456,0.406]", "data.normalize_std=[0.229,0.224,0.225]"],
    }


def time_data(cfg, batches: int) -> dict[str, float]:
    dataset = build_train_dataset(cfg)
    gbs = cfg.data.global_batch_size or cfg.data.batch_size
    collator = MaskCollator(build_mask_sampler_from_config(cfg, gbs))
    micro = cfg.data.batch_size
    samples = [(*dataset[i], i) for i in range(micro)]  # also warms up file and decoder state
    count = min(len(dataset) - micro, batches * micro)
    start = time.process_time()
    for i in range(micro, micro + count):
        dataset[i]
    item_s = (time.process_time() - start) / count
    start = time.process_time()
    for _ in range(batches):
        collator(samples)
    collate_s = (time.process_time() - start) / batches / micro
    loader = build_train_loader(
        dataset, collator, gbs, micro, 0, 1, cfg.seed, max_steps=batches, num_workers=0,
        pin_memory=False,
    )  # fmt: skip
    start = time.process_time()
    count = sum(batch[0].shape[0] for batch in loader)
    loader_s = (time.process_time() - start) / count
    return {"item": item_s, "collate": collate_s, "loader": loader_s, "batch": next(iter(loader))}


def time_model(cfg, batch, repeats: int) -> float:
    """Seconds per image of one single-process training step on ``batch`` (median)."""
    student = build_student(cfg)
    target = TargetEncoder(student.encoder, partitioned=False)
    target.bind(student.encoder)
    opt = torch.optim.AdamW(build_param_groups(student.encoder, student.predictor), lr=1e-4)
    imgs, _, _, masks_enc, masks_pred = batch
    times = []
    for _ in range(repeats + 1):
        start = time.process_time()
        with torch.no_grad():
            targets = make_targets(target(imgs), masks_pred, len(masks_enc))
        loss = jepa_loss(student(imgs, masks_enc, masks_pred), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        target.ema_update(0.996)
        times.append(time.process_time() - start)
    return common.median(times[1:]) / imgs.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="micro-batch of the 224 px rows")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--model-repeats", type=int, default=2)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    start = common.machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_jpeg_folder(Path(tmp) / "train", 512)  # <root>/train/<class>/ as ImageFolder reads
        for label, overrides in configs(Path(tmp), args.batch).items():
            cfg = load_config("fmnist_tiny", overrides)
            data = time_data(cfg, args.batches)
            model = time_model(cfg, data["batch"], args.model_repeats)
            rows.append((label, cfg.data.batch_size, data, model))
    lines = [
        common.machine_header(start, common.load_average()),
        "| configuration | micro-batch | dataset img/s | collator img/s | loader img/s "
        "(end to end) | model step img/s | loader / model |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, micro, d, model in rows:
        lines.append(
            f"| {label} | {micro} | {1 / d['item']:.0f} | {1 / d['collate']:.0f} | "
            f"{1 / d['loader']:.0f} | {1 / model:.1f} | {model / d['loader']:.0f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        common.write_result(args.out, text)


if __name__ == "__main__":
    main()
