"""bench.knn_resolution's chunked kNN scores exactly as the eval's kNN scores in one go."""

from __future__ import annotations

import pytest
import torch

from bench.knn_resolution import knn_top1, running_topk
from ijepa_ds.eval.knn import knn_classify
from tests.helpers import noisy_features as noisy

pytestmark = pytest.mark.fast


def test_running_topk_over_memory_chunks_equals_one_topk():
    train, test = noisy(301, 0), noisy(40, 1)
    sims, idx = running_topk(train.features.half(), test.features, k=7, memory_chunk=64)
    full = (
        torch.nn.functional.normalize(test.features, dim=1)
        @ torch.nn.functional.normalize(train.features.half().float(), dim=1).T
    )
    want_s, want_i = full.topk(7, dim=1)
    torch.testing.assert_close(sims, want_s)
    assert torch.equal(idx, want_i)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (20, 0.07), (40, 1.0)])
def test_knn_top1_matches_the_eval_knn(k, temperature):
    train, test = noisy(300, 2), noisy(170, 3)
    want = knn_classify(train, test, k=k, temperature=temperature).top1
    assert knn_top1(train, test, k, temperature) == pytest.approx(want)


def test_fewer_memory_rows_than_k_use_them_all():
    train, test = noisy(5, 4), noisy(9, 5)
    sims, idx = running_topk(train.features, test.features, k=20, memory_chunk=2)
    assert sims.shape == (9, 5) and sorted(idx[0].tolist()) == list(range(5))
