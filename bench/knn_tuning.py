"""kNN's k and temperature chosen on a validation split, for encoder pools and raw pixels.

Run from the repository root, on run folders that ``bench/quality.py`` wrote (the pretrained
run and the encoder at initialisation)::

    OMP_NUM_THREADS=2 python -m bench.knn_tuning /tmp/q6/pretrained /tmp/q6/init \\
        --out bench/results/knn_tuning.md

The eval's kNN uses DINO's k 20 and T 0.07 for every feature. This bench asks whether those
settings, rather than the features, decide how an encoder compares with raw pixels: for each
feature (the target encoder's last-layer tokens averaged over ``--grids`` g x g cells, the
largest keeping every token; the normalised pixels, pooled to the patch grid and whole) every
(k, T) of ``--ks`` x ``--temperatures`` is scored

- on ``val``: the memory is 90% of the train images, the queries the other 10% (the linear
  probe's seeded split, ``split_train_val``), and the best pair is chosen there;
- on ``test``: the memory is all 60k train images, the queries the 10k test images.

The report gives test top-1 at the default pair, at the pair chosen on val, and the best over
the grid on test itself (an oracle bound, not a result: it looks at the test labels).
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

from bench import common
from bench.knn_pools import encoder_pools, pixel_pools
from ijepa_ds.eval import FeatureSet, split_train_val
from ijepa_ds.eval.knn import votes_from_similarities

DEFAULT = (20, 0.07)  # the eval's k and T


def grid_top1(
    memory: torch.Tensor,
    memory_y: torch.Tensor,
    queries: torch.Tensor,
    query_y: torch.Tensor,
    pairs: list[tuple[int, float]],
    chunk: int = 1000,
) -> dict[tuple[int, float], float]:
    """Cosine kNN top-1 (%) for every (k, T) in pairs, the similarities computed once.

    memory [N, F] with labels memory_y [N]; queries [M, F] with labels query_y [M].
    """
    memory = F.normalize(memory.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    classes = int(max(memory_y.max(), query_y.max())) + 1
    hits = dict.fromkeys(pairs, 0)
    for start in range(0, len(query_y), chunk):
        sims = queries[start : start + chunk] @ memory.T
        y = query_y[start : start + chunk]
        for k, temperature in pairs:
            votes = votes_from_similarities(sims, memory_y, k, temperature, classes)
            hits[(k, temperature)] += (votes.argmax(dim=1) == y).sum().item()
    return {p: 100.0 * h / len(query_y) for p, h in hits.items()}


def tune(pair: list[FeatureSet], pairs: list[tuple[int, float]]) -> dict[str, object]:
    """{"default", "chosen", "val", "test", "oracle", "oracle_pair"}: test top-1 at DEFAULT,
    the pair chosen on the val split, its val and test top-1, and the best test top-1 over
    pairs (with its pair); pair: [train, test] FeatureSets."""
    train, test = pair
    tr, va = split_train_val(len(train.labels), 0.1, 0)
    val = grid_top1(
        train.features[tr], train.labels[tr], train.features[va], train.labels[va], pairs
    )
    on_test = grid_top1(train.features, train.labels, test.features, test.labels, pairs)
    chosen = max(pairs, key=val.__getitem__)
    oracle = max(pairs, key=on_test.__getitem__)
    return {
        "default": on_test[DEFAULT],
        "chosen": chosen,
        "val": val[chosen],
        "test": on_test[chosen],
        "oracle": on_test[oracle],
        "oracle_pair": oracle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="run folders (bench/quality.py writes them)")
    parser.add_argument("--grids", type=int, nargs="+", default=[2, 7])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.02, 0.04, 0.07, 0.15])
    parser.add_argument("--out", default="bench/results/knn_tuning.md")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start, t0 = common.machine_info(), time.perf_counter()
    grids = sorted(set(args.grids))
    pairs = sorted({(k, t) for k in args.ks for t in args.temperatures} | {DEFAULT})
    rows: list[tuple[str, dict[str, object]]] = []
    settings = None
    for source in args.sources:
        pools, settings, _ = encoder_pools(source, [-1], grids)
        for g in grids:
            rows.append((f"`{Path(source).name}`, {g}x{g} grid", tune(pools[(-1, g)], pairs)))
            print(rows[-1], flush=True)
    side = settings.crop_size
    pixels = pixel_pools(settings, [grids[-1], side])
    for g in (grids[-1], side):
        rows.append((f"raw pixels, {g}x{g}", tune(pixels[g], pairs)))
        print(rows[-1], flush=True)
    lines = [
        "| features | test, k 20 T 0.07 | k / T chosen on val | val | test at the chosen "
        "k / T | test, best over the grid (oracle) | its k / T |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        (k, t), (ok, ot) = r["chosen"], r["oracle_pair"]
        lines.append(
            f"| {name} | {r['default']:.2f} | {k} / {t} | {r['val']:.2f} | {r['test']:.2f} "
            f"| {r['oracle']:.2f} | {ok} / {ot} |"
        )
    command = "OMP_NUM_THREADS=2 python -m bench.knn_tuning " + " ".join(sys.argv[1:])
    text = (
        common.report_header(
            "kNN with k and T chosen on a validation split",
            start,
            command,
            time.perf_counter() - t0,
        )
        + f"kNN top-1 (%), cosine, weighted votes exp(s / T). Grid: k in {args.ks}, T in "
        f"{args.temperatures}. `val`: 54k train images as memory, the other 6k (the linear "
        "probe's seeded split) as queries. `test`: 60k train images as memory, the 10k test "
        "images as queries. A g x g grid averages the last layer's tokens (the normalised "
        "pixels) over g x g cells; the largest keeps every token; pixels 28x28 = every pixel.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    common.write_result(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
