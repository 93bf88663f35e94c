"""kNN of the encoder's tokens at a higher eval resolution: sub-patch detail for a 4x4-patch ViT.

Run from the repository root, on run folders that ``bench/quality.py`` wrote (the pretrained
run and the encoder at initialisation)::

    OMP_NUM_THREADS=2 python -m bench.knn_resolution /work/q6/pretrained /work/q6/init \\
        --sizes 28 56 --out bench/results/knn_resolution.md

At 28x28 a patch-4 encoder gives 7x7 tokens, one per 16 pixels, and kNN over every token
stays below kNN over every pixel (``bench/results/knn_pools.md``). Here the eval transform
upsamples each image to S x S (``--crop-size S --resize-size S`` of ``ijepa-ds eval``:
bilinear resize, then normalise) and the encoder, its position table resized to the
(S/4) x (S/4) grid (``--pos-interp``, bicubic by default), encodes it. Pretraining used random
resized crops of 30-100% of the image, so objects up to ~1.8x their eval size are in its
training distribution. Features per size: every last-layer token (after the final norm), and
the tokens averaged over 7x7 cells (the width of 28x28's every token); raw pixels at the same
size and at 28x28 for reference.

kNN is the eval's (cosine, k 20, T 0.07 by default), on ``test`` (60k train images as memory,
the 10k test images as queries) and on ``val`` (54k as memory, the linear probe's seeded 6k
as queries), so that a size can be chosen without looking at test. Tokens are held in fp16
(S 56: 196 x 192 values per image, 4.5 GB for the train split); similarities are computed in
fp32, one memory chunk at a time, keeping a running top-k (``ijepa_ds.eval.knn``). The
every-token rows are the eval's ``tokens`` pool: ``ijepa-ds eval knn RUN --pool tokens
--crop-size 56 --resize-size 56 --pos-interp bicubic`` gives the ``test`` column's number.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench import common
from ijepa_ds.eval import FeatureSet, split_train_val
from ijepa_ds.eval.args import EvalArgs
from ijepa_ds.eval.features import _grid_pool
from ijepa_ds.eval.knn import knn_classify
from ijepa_ds.eval.load import load_target_encoder, resolve_source, run_config
from ijepa_ds.eval.run import build_split, resolve_settings


def knn_top1(train: FeatureSet, test: FeatureSet, k: int, temperature: float) -> float:
    """The eval's weighted-vote kNN top-1 (%) of test against train."""
    return knn_classify(train, test, k, temperature).top1


def val_top1(train: FeatureSet, k: int, temperature: float) -> float:
    """kNN top-1 (%) of the linear probe's seeded 10% of train as queries against the other
    90% as memory (as ``bench.knn_tuning``)."""
    tr, va = split_train_val(len(train.labels), 0.1, 0)
    return knn_top1(
        FeatureSet(train.features[tr], train.labels[tr]),
        FeatureSet(train.features[va], train.labels[va]),
        k,
        temperature,
    )


def val_and_test(pair: list[FeatureSet], k: int, temperature: float) -> tuple[float, float]:
    """(val top-1, test top-1) of [train, test] FeatureSets (val: ``val_top1``)."""
    train, test = pair
    return val_top1(train, k, temperature), knn_top1(train, test, k, temperature)


def sized_settings(source: str, encoder, size: int):
    """The eval settings of ``source`` with images resized to size x size."""
    cfg = run_config(resolve_source(source))
    args = EvalArgs(action="knn", source=source, crop_size=size, resize_size=size)
    return resolve_settings(args, encoder, cfg, source)


@torch.no_grad()
def encoder_tokens(
    source: str, size: int, pos_interp: str, batch: int = 250
) -> dict[str, list[FeatureSet]]:
    """{"every token": [train, test], "7x7 cells": [train, test]} of source's target encoder
    on size x size images; every token: [n, (size/p)^2 D] fp16, 7x7 cells: [n, 49 D] fp16."""
    encoder, _ = load_target_encoder(source)
    encoder.eval()
    encoder.pos_interp = pos_interp
    settings = sized_settings(source, encoder, size)
    out: dict[str, list[FeatureSet]] = {"every token": [], "7x7 cells": []}
    for train in (True, False):
        tokens, cells, labels = [], [], []
        for imgs, ys in DataLoader(build_split(settings, train), batch_size=batch):
            t = encoder(imgs)  # [b, (size / p)^2, D]
            tokens.append(t.flatten(1).half())
            cells.append(_grid_pool(t, imgs.shape[-2:], encoder, side=7).half())
            labels.append(ys)
        y = torch.cat(labels)
        out["every token"].append(FeatureSet(torch.cat(tokens), y))
        out["7x7 cells"].append(FeatureSet(torch.cat(cells), y))
    return out


def pixels(source: str, size: int) -> list[FeatureSet]:
    """[train, test] of the eval-normalised images at size x size, flattened: [n, C size^2]."""
    encoder, _ = load_target_encoder(source)
    settings = sized_settings(source, encoder, size)
    pair = []
    for train in (True, False):
        xs, ys = zip(*DataLoader(build_split(settings, train), batch_size=2048))
        pair.append(FeatureSet(torch.cat(xs).flatten(1), torch.cat(ys)))
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="run folders (bench/quality.py writes them)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 56])
    parser.add_argument("--pos-interp", default="bicubic", choices=["bicubic", "sincos"])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--out", default="bench/results/knn_resolution.md")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start, t0 = common.machine_info(), time.perf_counter()
    lines = [
        "| features | eval size | tokens | width | val top-1 | test top-1 | extraction s |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, size: int, tokens: str, pair: list[FeatureSet], seconds: float) -> None:
        val, test = val_and_test(pair, args.k, args.temperature)
        width = pair[0].features.shape[1]
        lines.append(
            f"| {name} | {size}x{size} | {tokens} | {width} | {val:.2f} | {test:.2f} "
            f"| {seconds:.0f} |"
        )
        print(lines[-1], flush=True)

    for source in args.sources:
        for size in args.sizes:
            t_start = time.perf_counter()
            grid = size // 4
            pools = encoder_tokens(source, size, args.pos_interp)
            seconds = time.perf_counter() - t_start
            name = f"`{Path(source).name}`"
            row(name, size, f"{grid}x{grid}", pools.pop("every token"), seconds)
            if grid != 7:
                row(name, size, f"{grid}x{grid} in 7x7 cells", pools["7x7 cells"], seconds)
            del pools
    for size in sorted({28, *args.sizes}):
        t_start = time.perf_counter()
        pair = pixels(args.sources[0], size)
        row("raw pixels", size, "-", pair, time.perf_counter() - t_start)
    command = "OMP_NUM_THREADS=2 python -m bench.knn_resolution " + " ".join(sys.argv[1:])
    text = (
        common.report_header(
            "kNN at a higher eval resolution", start, command, time.perf_counter() - t0
        )
        + f"kNN top-1 (%), cosine, k {args.k}, T {args.temperature}; `val`: 54k train images "
        "as memory, the other 6k (the linear probe's seeded split) as queries; `test`: 60k "
        "train images as memory, the 10k test images as queries. Eval size S: each image "
        f"resized (bilinear) to S x S; the encoder's positions resized to its grid "
        f"({args.pos_interp}). `tokens`: every last-layer token concatenated, or averaged "
        "over 7x7 cells first. `extraction s`: wall time to encode (load) the 70k images at "
        "that size.\n\n" + "\n".join(lines) + "\n"
    )
    common.write_result(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
