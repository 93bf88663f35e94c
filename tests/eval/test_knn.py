"""Weighted k-NN: perfect on separated clusters; temperature-weighted votes as specified."""

from __future__ import annotations

import math

import pytest
import torch

from ijepa_ds.eval.features import FeatureSet
from ijepa_ds.eval.knn import knn_classify, knn_votes, running_topk
from tests.helpers import noisy_features


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
    with pytest.raises(ValueError, match="k >= 1"):
        knn_classify(train, train, k=0)


def test_running_topk_over_memory_chunks_equals_one_topk_over_fp16_memory():
    train, test = noisy_features(301, 0), noisy_features(40, 1)
    sims, idx = running_topk(train.features.half(), test.features, k=7, memory_chunk=64)
    memory = torch.nn.functional.normalize(train.features.half().float(), dim=1)
    want_s, want_i = (torch.nn.functional.normalize(test.features, dim=1) @ memory.T).topk(7)
    torch.testing.assert_close(sims, want_s)
    assert torch.equal(idx, want_i)


def test_fewer_memory_rows_than_k_use_them_all():
    train, test = noisy_features(5, 4), noisy_features(9, 5)
    sims, idx = running_topk(train.features, test.features, k=20, memory_chunk=2)
    assert sims.shape == (9, 5) and sorted(idx[0].tolist()) == list(range(5))


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (20, 0.07), (40, 1.0)])
def test_chunked_classify_scores_as_one_vote_over_all_similarities(k, temperature):
    train, test = noisy_features(300, 2), noisy_features(170, 3)
    votes = knn_votes(train.features, train.labels, test.features, k, temperature, 5)
    ranked = votes.argsort(dim=1, descending=True, stable=True)
    want1 = 100.0 * (ranked[:, 0] == test.labels).float().mean().item()
    want5 = 100.0 * (ranked[:, :5] == test.labels[:, None]).any(1).float().mean().item()
    for chunk in (1, 37, 8192):
        got = knn_classify(train, test, k, temperature, chunk=chunk)
        assert (got.top1, got.top5) == (pytest.approx(want1), pytest.approx(want5))
    fp16 = FeatureSet(train.features.half(), train.labels)
    assert knn_classify(fp16, test, k, temperature, chunk=64).top1 == pytest.approx(want1, abs=1.5)
