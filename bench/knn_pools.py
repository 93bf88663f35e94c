"""kNN top-1 on Fashion-MNIST per spatial pool and layer: what the pooling keeps of the layout.

Run from the repository root, on run folders that ``bench/quality.py`` wrote (the pretrained
run and the encoder at initialisation)::

    python -m bench.knn_pools /tmp/q6/pretrained /tmp/q6/init --out bench/results/knn_pools.md

For each source, the target encoder's patch tokens of each ``--layers`` block (after the
encoder's final norm, as the ``last4`` pool takes them) are averaged over an adaptive g x g
grid of the patch grid, for every g in ``--grids`` (1 = the ``avg`` pool, 2 = ``grid2``, the
patch grid's side = every token kept), and classified with the eval's weighted kNN (k 20,
T 0.07, cosine, train set as memory). Raw pixels (normalised as the eval normalises them) are
pooled the same way over the image: g x g averages, and the full 28 x 28 image.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bench import common
from ijepa_ds.eval import FeatureSet, knn_classify
from ijepa_ds.eval.args import EvalArgs
from ijepa_ds.eval.features import _grid_pool
from ijepa_ds.eval.load import load_target_encoder, resolve_source, run_config
from ijepa_ds.eval.run import build_split, resolve_settings


@torch.no_grad()
def encoder_pools(source: str, layers: list[int], grids: list[int], batch: int = 500):
    """({(layer, g): [train, test] FeatureSets}, eval settings, encoder depth) of one run
    folder's target encoder; layers index ``encoder.blocks`` (negative from the end)."""
    encoder, _ = load_target_encoder(source)
    encoder.eval()
    cfg = run_config(resolve_source(source))
    settings = resolve_settings(EvalArgs(action="knn", source=source), encoder, cfg, source)
    blocks = [encoder.blocks[i] for i in layers]
    out: dict[tuple[int, int], list[FeatureSet]] = {}
    captured: dict[int, torch.Tensor] = {}  # block index -> its output of the current batch
    for train in (True, False):
        hooks = [
            b.register_forward_hook(lambda _m, _i, o, i=i: captured.__setitem__(i, o))
            for i, b in zip(layers, blocks)
        ]
        feats: dict[tuple[int, int], list[torch.Tensor]] = {}
        labels = []
        try:
            for imgs, ys in DataLoader(build_split(settings, train), batch_size=batch):
                encoder(imgs)
                for i in layers:
                    tokens = encoder.norm(captured[i])  # [b, h w, D]
                    for g in grids:
                        pooled = _grid_pool(tokens, imgs.shape[-2:], encoder, side=g)
                        feats.setdefault((i, g), []).append(pooled.half())
                labels.append(ys)
        finally:
            for h in hooks:
                h.remove()
        y = torch.cat(labels)
        for key, parts in feats.items():
            out.setdefault(key, []).append(FeatureSet(torch.cat(parts), y))
    return out, settings, len(encoder.blocks)


def pixel_pools(settings, grids: list[int]) -> dict[int, list[FeatureSet]]:
    """{g: (train, test)} of the eval-normalised images averaged over g x g cells; g = the
    image side keeps every pixel."""
    out: dict[int, list[FeatureSet]] = {}
    for train in (True, False):
        xs, ys = zip(*DataLoader(build_split(settings, train), batch_size=2048))
        imgs, y = torch.cat(xs), torch.cat(ys)
        for g in grids:
            out.setdefault(g, []).append(FeatureSet(F.adaptive_avg_pool2d(imgs, g).flatten(1), y))
    return out


def top1(pair: list[FeatureSet], k: int, temperature: float) -> float:
    train, test = (FeatureSet(s.features.float(), s.labels) for s in pair)
    return knn_classify(train, test, k=k, temperature=temperature).top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="run folders (bench/quality.py writes them)")
    parser.add_argument("--layers", type=int, nargs="+", default=[-3, -1])
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4, 7])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--out", default="bench/results/knn_pools.md")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start, t0 = common.machine_info(), time.perf_counter()
    grids = sorted(set(args.grids))
    header = "| features | " + " | ".join(f"{g}x{g} grid" for g in grids) + " | full |"
    lines = [header, "|---" * (len(grids) + 2) + "|"]
    settings = None
    for source in args.sources:
        pools, settings, depth = encoder_pools(source, args.layers, grids)
        for layer in args.layers:
            cells = [f"{top1(pools[(layer, g)], args.k, args.temperature):.2f}" for g in grids]
            name = f"`{Path(source).name}`, block {layer % depth + 1} of {depth}"
            lines.append(f"| {name} | " + " | ".join(cells) + " | - |")
            print(lines[-1], flush=True)
    side = settings.crop_size
    pixels = pixel_pools(settings, [*grids, side])
    cells = [f"{top1(pixels[g], args.k, args.temperature):.2f}" for g in [*grids, side]]
    lines.append("| raw pixels | " + " | ".join(cells) + " |")
    command = "python -m bench.knn_pools " + " ".join(sys.argv[1:])
    text = (
        common.report_header(
            "kNN per spatial pool and layer", start, command, time.perf_counter() - t0
        )
        + f"kNN top-1 (%) on the 10k test images, k {args.k}, T {args.temperature}, cosine, "
        "the 60k train images as memory. A g x g grid averages the tokens (pixels) over g x g "
        "cells of the patch grid (image) and concatenates them: width g^2 x D (g^2 for pixels); "
        "`full` = every pixel.\n\n" + "\n".join(lines) + "\n"
    )
    common.write_result(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
