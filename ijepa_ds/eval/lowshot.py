"""Low-shot evaluation: a seeded, class-balanced fraction of the labels, then probe + kNN.

Counting rule: class c with n_c labelled train rows keeps exactly ceil(fraction * n_c) of them
(at least one row per class for any fraction > 0; 1% of Fashion-MNIST's 6000 rows per class
is exactly 60). Which rows is a seeded draw per class: the same (labels, fraction, seed) gives
the same subset on every machine; another seed gives another subset. The test split is never
subsampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from ijepa_ds.eval.features import FeatureSet
from ijepa_ds.eval.knn import knn_classify
from ijepa_ds.eval.linear import ProbeConfig, linear_probe


def per_class_count(n: int, fraction: float) -> int:
    """Rows kept from a class of n rows: ceil(fraction * n), computed without float drift."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"low-shot fraction must be in (0, 1], got {fraction}")
    # round() first so that e.g. 0.1 * 6000 = 600.0000000000001 does not become 601.
    return min(n, math.ceil(round(fraction * n, 9)))


def lowshot_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted row indices [K] of a class-balanced subset of labels [N] (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        rows = (labels == cls).nonzero(as_tuple=True)[0]
        perm = torch.randperm(len(rows), generator=gen)
        chosen.append(rows[perm[: per_class_count(len(rows), fraction)]])
    return torch.cat(chosen).sort().values


def subset(features: FeatureSet, indices: torch.Tensor) -> FeatureSet:
    return FeatureSet(features.features[indices], features.labels[indices])


def lowshot_eval(
    train: FeatureSet,
    test: FeatureSet,
    fractions: Sequence[float],
    probe: ProbeConfig,
    k: int,
    temperature: float,
    seeds: Sequence[int] = (0,),
) -> list[dict]:
    """One row per (fraction, seed): subset size, linear-probe and kNN test top-1 (%).

    The probe's own split/initialisation seed follows the subset seed, so repeated seeds are
    independent repetitions.
    """
    num_classes = int(max(train.labels.max().item(), test.labels.max().item())) + 1
    rows = []
    for fraction in fractions:
        for seed in seeds:
            part = subset(train, lowshot_indices(train.labels, fraction, seed))
            result = linear_probe(part, test, replace(probe, seed=seed), num_classes)
            knn = knn_classify(part, test, k, temperature, num_classes, device=probe.device)
            rows.append(
                {
                    "fraction": fraction,
                    "seed": seed,
                    "num_labelled": len(part),
                    "linear_top1": result.test_top1,
                    "linear_lr": result.lr,
                    "linear_wd": result.wd,
                    "linear_epochs": result.epochs,
                    "knn_top1": knn.top1,
                    "knn_k": knn.k,
                }
            )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std (over seeds) of linear and kNN top-1 per fraction."""
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        group = [r for r in rows if r["fraction"] == fraction]
        lin = torch.tensor([r["linear_top1"] for r in group], dtype=torch.float64)
        knn = torch.tensor([r["knn_top1"] for r in group], dtype=torch.float64)
        out.append(
            {
                "fraction": fraction,
                "seeds": len(group),
                "num_labelled": group[0]["num_labelled"],
                "linear_top1_mean": lin.mean().item(),
                "linear_top1_std": lin.std().item() if len(group) > 1 else 0.0,
                "knn_top1_mean": knn.mean().item(),
                "knn_top1_std": knn.std().item() if len(group) > 1 else 0.0,
            }
        )
    return out
