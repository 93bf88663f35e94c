"""Weighted k-NN: perfect on separated clusters; temperature-weighted votes as specified."""

from __future__ import annotations

import math

import pytest
import torch

from ijepa_ds.eval.features import FeatureSet
from ijepa_ds.eval.knn import knn_classify, knn_votes


def clusters(n_per_class: int, seed: int, classes: int = 6) -> FeatureSet:
    """Tight clusters around orthogonal directions (with a shared offset and varying norm)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, 32) * 10.0
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + 0.5 * torch.randn(len(y), 32, generator=gen)
    x = x * torch.rand(len(y), 1, generator=gen).add(0.5)  # cosine ignores the norm
    return FeatureSet(x, y)


def test_well_separated_clusters_are_classified_perfectly():
    result = knn_classify(clusters(30, 0), clusters(20, 1), k=10, temperature=0.07)
    assert result.top1 == 100.0 and result.top5 == 100.0
    assert (result.num_train, result.num_test, result.k) == (180, 120, 10)


def test_temperature_weighting_on_a_hand_made_example():
    # Train rows at cosine 1.0 (class 0), 0.8 and 0.6 (class 1), 0.0 (class 2) from the query.
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    train_y = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0]])
    for temperature in (1.0, 0.1):
        votes = knn_votes(train_x, train_y, query, k=3, temperature=temperature, num_classes=3)
        expected = [
            math.exp(1.0 / temperature),
            math.exp(0.8 / temperature) + math.exp(0.6 / temperature),
            0.0,  # the 4th row is not among the 3 neighbours
        ]
        torch.testing.assert_close(votes[0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # A soft vote lets the two class-1 neighbours outvote the nearest row; a sharp one does not.
    test_y = torch.tensor([1])
    soft = knn_classify(FeatureSet(train_x, train_y), FeatureSet(query, test_y), 3, 1.0)
    sharp = knn_classify(FeatureSet(train_x, train_y), FeatureSet(query, test_y), 3, 0.1)
    assert soft.top1 == 100.0 and sharp.top1 == 0.0
    assert soft.top5 is None  # fewer than 5 classes


def test_k_is_capped_at_the_train_size_and_validated():
    train = FeatureSet(torch.eye(3), torch.tensor([0, 1, 2]))
    result = knn_classify(train, FeatureSet(torch.eye(3), torch.tensor([0, 1, 2])), k=50)
    assert result.k == 3 and result.top1 == 100.0
    with pytest.raises(ValueError, match="temperature"):
        knn_votes(train.features, train.labels, train.features, 1, 0.0, 3)
