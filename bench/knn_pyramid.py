"""kNN of spatial pyramids on Fashion-MNIST, the levels chosen on a validation split of train.

Run from the repository root, on run folders that ``bench/quality.py`` wrote (the pretrained
run and the encoder at initialisation)::

    OMP_NUM_THREADS=2 python -m bench.knn_pyramid /tmp/q6/pretrained /tmp/q6/init \\
        --out bench/results/knn_pyramid.md

For each source the target encoder's last-layer tokens (after ``encoder.norm``, as the eval's
pools take them) are averaged over g x g grids of the patch grid for g in ``--grids`` (the
largest, the patch grid's side, keeps every token); raw pixels (normalised as the eval
normalises them) over the same grids of the image, with every pixel as the finest level. A
level set is the concatenation of its levels, each L2-normalised, so its cosine similarity is
the mean of the levels' cosines (spatial pyramid matching, Lazebnik et al. 2006, with equal
level weights).

Every level set is scored with the eval's weighted kNN (k 20, T 0.07) twice:

- ``val``: the memory is 90% of the train images, the queries the other 10% (the linear
  probe's seeded split, ``split_train_val``), so a set can be chosen without the test images;
- ``test``: the memory is all 60k train images, the queries the 10k test images.

With ``--center`` each set is scored again with every level centred first (the memory's mean
row subtracted from memory and queries, then L2-normalised: SimpleShot's CL2N, Wang et al.
2019). Centring removes what all images share, such as the position signal in every token.
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

FINEST = "all"  # the level that keeps every token (pixel)
LEVEL_SETS = ("1", "2", "all", "1+all", "2+all", "1+2+all", "1+2+4+all", "1+2+3+4+all", "1+2+3+4")


def level_set_top1(
    levels: dict[str, tuple[torch.Tensor, torch.Tensor]],
    memory_y: torch.Tensor,
    query_y: torch.Tensor,
    sets: list[list[str]],
    k: int,
    temperature: float,
    center: bool = False,
    chunk: int = 1000,
) -> list[float]:
    """kNN top-1 (%) of each level set.

    levels: {name: (memory [N, F_l], queries [M, F_l])}; memory_y [N], query_y [M]. The
    similarity of a set is the mean over its levels of the cosine similarity, computed per
    level once per chunk of queries and shared by every set. center: subtract each level's
    memory mean from memory and queries before the normalisation.
    """
    memory, queries = {}, {}
    for n, (m, q) in levels.items():
        mean = m.float().mean(dim=0) if center else 0.0
        memory[n] = F.normalize(m.float() - mean, dim=1)
        queries[n] = F.normalize(q.float() - mean, dim=1)
    classes = int(max(memory_y.max(), query_y.max())) + 1
    hits = [0] * len(sets)
    for start in range(0, len(query_y), chunk):
        y = query_y[start : start + chunk]
        sims = {n: queries[n][start : start + chunk] @ memory[n].T for n in levels}
        for i, names in enumerate(sets):
            mean = sum(sims[n] for n in names) / len(names)
            votes = votes_from_similarities(mean, memory_y, k, temperature, classes)
            hits[i] += (votes.argmax(dim=1) == y).sum().item()
    return [100.0 * h / len(query_y) for h in hits]


def score(
    pair: dict[str, list[FeatureSet]], sets: list[list[str]], k: int, temperature: float, center
):
    """{split: [top-1 per set]} for the splits "val", "test" (and "val centred", "test centred"
    with center); pair: {level: [train, test] FeatureSets}."""
    train, test = next(iter(pair.values()))  # every level has the same labels
    train_y, test_y = train.labels, test.labels
    tr, va = split_train_val(len(train_y), 0.1, 0)
    val_levels = {n: (s[0].features[tr], s[0].features[va]) for n, s in pair.items()}
    test_levels = {n: (s[0].features, s[1].features) for n, s in pair.items()}
    out = {}
    for centred in (False, True) if center else (False,):
        tag = " centred" if centred else ""
        out["val" + tag] = level_set_top1(
            val_levels, train_y[tr], train_y[va], sets, k, temperature, centred
        )
        out["test" + tag] = level_set_top1(
            test_levels, train_y, test_y, sets, k, temperature, centred
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="run folders (bench/quality.py writes them)")
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4, 7])
    parser.add_argument("--sets", nargs="+", default=list(LEVEL_SETS))
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--center", action="store_true", help="also score centred levels")
    parser.add_argument("--out", default="bench/results/knn_pyramid.md")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start, t0 = common.machine_info(), time.perf_counter()
    grids = sorted(set(args.grids))
    sets = [s.split("+") for s in args.sets]
    results, settings = {}, None
    for source in args.sources:
        pools, settings, _ = encoder_pools(source, [-1], grids)
        levels = {str(g): pools[(-1, g)] for g in grids[:-1]} | {FINEST: pools[(-1, grids[-1])]}
        name = f"`{Path(source).name}`"
        results[name] = score(levels, sets, args.k, args.temperature, args.center)
        print(results, flush=True)
    side = settings.crop_size
    pixels = pixel_pools(settings, [*grids[:-1], side])
    levels = {str(g): pixels[g] for g in grids[:-1]} | {FINEST: pixels[side]}
    results["raw pixels"] = score(levels, sets, args.k, args.temperature, args.center)
    names, splits = list(results), list(results["raw pixels"])
    lines = [
        "| level set | " + " | ".join(f"{n} {s}" for n in names for s in splits) + " |",
        "|---|" + "---|" * (len(names) * len(splits)),
    ]
    for i, name in enumerate(args.sets):
        cells = [f"{results[n][split][i]:.2f}" for n in names for split in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    picks = []
    for split in (s for s in splits if s.startswith("val")):
        val = results[names[0]][split]
        best = max(range(len(sets)), key=val.__getitem__)
        test = results[names[0]][split.replace("val", "test")][best]
        picks.append(f"{split}: **{args.sets[best]}** (val {val[best]:.2f}, test {test:.2f})")
    command = "OMP_NUM_THREADS=2 python -m bench.knn_pyramid " + " ".join(sys.argv[1:])
    text = (
        common.report_header(
            "kNN of spatial pyramids, levels chosen on a validation split",
            start,
            command,
            time.perf_counter() - t0,
        )
        + f"kNN top-1 (%), k {args.k}, T {args.temperature}. A level g averages the last "
        "layer's tokens (the pixels) over g x g cells; `all` keeps every token (the 7x7 grid; "
        "every pixel of the 28x28 image); a set concatenates its levels, each L2-normalised, "
        "so its cosine is the mean of the levels' cosines. `val`: 54k train images as memory, "
        "the other 6k (the linear probe's seeded split) as queries. `test`: 60k train images "
        "as memory, the 10k test images as queries.\n\n"
        + "\n".join(lines)
        + f"\n\nBest level set of {names[0]} by "
        + "; by ".join(picks)
        + ".\n"
    )
    common.write_result(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
