"""Low-shot subsets: exact per-class counts, seeded, then probe + kNN on the subset."""

from __future__ import annotations

import pytest
import torch

from ijepa_ds.eval.features import FeatureSet
from ijepa_ds.eval.linear import ProbeConfig
from ijepa_ds.eval.lowshot import lowshot_eval, lowshot_indices, per_class_count, summarize

# Uneven classes: 100, 37 and 5 rows, shuffled.
LABELS = torch.tensor([0] * 100 + [1] * 37 + [2] * 5)[
    torch.randperm(142, generator=torch.Generator().manual_seed(0))
]


def test_count_rule_is_ceil_of_the_fraction_per_class():
    assert per_class_count(6000, 0.01) == 60 and per_class_count(6000, 0.1) == 600
    assert per_class_count(37, 0.1) == 4 and per_class_count(5, 0.1) == 1
    assert per_class_count(3, 1.0) == 3
    with pytest.raises(ValueError, match="fraction"):
        per_class_count(10, 0.0)


def test_subset_has_exactly_the_requested_count_per_class():
    idx = lowshot_indices(LABELS, 0.1, seed=0)
    counts = torch.bincount(LABELS[idx], minlength=3).tolist()
    assert counts == [10, 4, 1]
    assert torch.equal(idx, idx.unique())  # sorted, no repeats


def test_subset_is_deterministic_per_seed_and_differs_across_seeds():
    a, b = lowshot_indices(LABELS, 0.3, seed=5), lowshot_indices(LABELS, 0.3, seed=5)
    assert torch.equal(a, b)
    c = lowshot_indices(LABELS, 0.3, seed=6)
    assert not torch.equal(a, c)
    assert torch.equal(torch.bincount(LABELS[a]), torch.bincount(LABELS[c]))


def test_lowshot_eval_probes_and_knns_the_subset():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16) * 6.0
    y_train, y_test = torch.arange(400) % 4, torch.arange(200) % 4
    train = FeatureSet(centres[y_train] + torch.randn(400, 16, generator=gen), y_train)
    test = FeatureSet(centres[y_test] + torch.randn(200, 16, generator=gen), y_test)
    probe = ProbeConfig(lrs=(0.1,), wds=(0.0,), epochs=20, batch_size=32)
    rows = lowshot_eval(train, test, [0.05, 0.5], probe, k=5, temperature=0.1, seeds=[0, 1])
    assert [(r["fraction"], r["seed"], r["num_labelled"]) for r in rows] == [
        (0.05, 0, 20),
        (0.05, 1, 20),
        (0.5, 0, 200),
        (0.5, 1, 200),
    ]
    assert all(r["knn_top1"] > 95 and r["linear_top1"] > 90 for r in rows)
    summary = summarize(rows)
    assert [(s["fraction"], s["seeds"]) for s in summary] == [(0.05, 2), (0.5, 2)]
    lin = [r["linear_top1"] for r in rows[:2]]
    assert summary[0]["linear_top1_mean"] == pytest.approx(sum(lin) / 2)
