"""bench.knn_tuning scores every (k, T) exactly as the eval's kNN would score it alone."""

from __future__ import annotations

import pytest

from bench.knn_tuning import grid_top1, tune
from ijepa_ds.eval.knn import knn_classify
from tests.helpers import noisy_features as noisy

pytestmark = pytest.mark.fast


def test_grid_top1_matches_the_eval_knn_at_every_pair():
    train, test = noisy(300, 0), noisy(170, 1)
    pairs = [(1, 0.02), (5, 0.07), (20, 0.07), (40, 1.0)]
    got = grid_top1(train.features, train.labels, test.features, test.labels, pairs, chunk=64)
    for k, t in pairs:
        assert got[(k, t)] == pytest.approx(knn_classify(train, test, k=k, temperature=t).top1)
    assert len(set(got.values())) > 1  # the pairs really differ on this data


def test_tune_chooses_on_val_and_reports_the_test_score_of_that_choice():
    train, test = noisy(400, 2), noisy(150, 3)
    pairs = [(1, 0.07), (20, 0.07), (40, 0.15)]
    r = tune([train, test], pairs)
    on_test = grid_top1(train.features, train.labels, test.features, test.labels, pairs)
    assert r["test"] == on_test[r["chosen"]] and r["default"] == on_test[(20, 0.07)]
    assert r["oracle"] == max(on_test.values()) >= r["test"]
