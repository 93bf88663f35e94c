"""bench.knn_resolution's val split keeps its queries out of the memory."""

from __future__ import annotations

import pytest
import torch

from bench.knn_resolution import val_and_test
from ijepa_ds.eval import FeatureSet, knn_classify, split_train_val
from tests.helpers import noisy_features

pytestmark = pytest.mark.fast


def test_val_queries_are_held_out_of_the_memory():
    # Random labels: a query found in the memory would be its own nearest neighbour (k 1),
    # scoring 100%; held out, it scores near chance (20%).
    train = noisy_features(500, 0)
    shuffled = FeatureSet(train.features, torch.randint(0, 5, (500,)))
    val, test = val_and_test([shuffled, shuffled], k=1, temperature=0.07)
    assert test == 100.0 and val < 50.0
    tr, va = split_train_val(500, 0.1, 0)
    memory = FeatureSet(shuffled.features[tr], shuffled.labels[tr])
    queries = FeatureSet(shuffled.features[va], shuffled.labels[va])
    assert val == knn_classify(memory, queries, k=1, temperature=0.07).top1
