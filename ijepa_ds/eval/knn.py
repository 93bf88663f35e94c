"""Weighted k-nearest-neighbour classifier on frozen features (the DINO protocol).

Features are L2-normalised, so the dot product is the cosine similarity s. Each test row takes
its k most similar train rows; neighbour j votes for its label with weight exp(s_j / T); the
class with the largest total wins (ties: the lower class index). Top-5 counts a hit when the
label is among the 5 largest totals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ijepa_ds.eval.features import FeatureSet


@dataclass
class KNNResult:
    """Accuracies in % (top5 is None with fewer than 5 classes)."""

    top1: float
    top5: float | None
    k: int
    temperature: float
    num_train: int
    num_test: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def knn_votes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
) -> torch.Tensor:
    """Class votes [M, C] of test_x [M, F] from train_x [N, F] with labels train_y [N].

    votes[m, c] = sum over the k nearest train rows j of test row m with label c of
    exp(cos(test_m, train_j) / temperature).
    """
    sims = F.normalize(test_x.float(), dim=1) @ F.normalize(train_x.float(), dim=1).T
    return votes_from_similarities(sims, train_y, k, temperature, num_classes)


def _check_knn(k: int, temperature: float) -> None:
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")


def votes_from_similarities(
    sims: torch.Tensor, train_y: torch.Tensor, k: int, temperature: float, num_classes: int
) -> torch.Tensor:
    """Class votes [M, C] from similarities sims [M, N] of M test rows to N train rows with
    labels train_y [N] (the vote of ``knn_votes``, for callers that build sims themselves)."""
    _check_knn(k, temperature)
    top_sims, top_idx = sims.topk(min(k, sims.shape[1]), dim=1)
    return votes_from_neighbours(top_sims, train_y[top_idx], temperature, num_classes)


def votes_from_neighbours(
    top_sims: torch.Tensor, top_labels: torch.Tensor, temperature: float, num_classes: int
) -> torch.Tensor:
    """Class votes [M, C] from each test row's neighbours: similarities top_sims [M, k] and
    their labels top_labels [M, k] (for callers that find the neighbours themselves)."""
    weights = (top_sims / temperature).exp()
    votes = torch.zeros(top_sims.shape[0], num_classes, device=top_sims.device)
    return votes.scatter_add_(1, top_labels, weights)


@torch.no_grad()
def running_topk(
    memory: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    memory_chunk: int = 8192,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k of every query over the memory, one memory chunk in fp32 at a time.

    memory [N, F] and queries [M, F], any float dtype and device -> (similarities [M, k'] fp32,
    descending; memory indices [M, k'] int64), both on ``device``, with k' = min(k, N). Only one
    chunk of the memory is ever in fp32 on ``device``: [memory_chunk, F].
    """
    dev = torch.device(device)
    q = F.normalize(queries.to(dev).float(), dim=1)
    best_s = torch.full((len(q), 0), float("-inf"), device=dev)
    best_i = torch.zeros((len(q), 0), dtype=torch.long, device=dev)
    for start in range(0, len(memory), memory_chunk):
        m = F.normalize(memory[start : start + memory_chunk].to(dev).float(), dim=1)
        s, i = (q @ m.T).topk(min(k, len(m)), dim=1)
        keep = min(k, best_s.shape[1] + s.shape[1])
        best_s, pick = torch.cat([best_s, s], 1).topk(keep, dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, pick)
    return best_s, best_i


def knn_classify(
    train: FeatureSet,
    test: FeatureSet,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 8192,
    device: str = "cpu",
) -> KNNResult:
    """Top-1/top-5 of the weighted kNN vote; the train rows are searched ``chunk`` at a time
    (``running_topk``), the test rows all at once (in fp32 on ``device``)."""
    _check_knn(k, temperature)
    dev = torch.device(device)
    train_y, y = train.labels.to(dev), test.labels.to(dev)
    if num_classes is None:
        num_classes = int(max(train_y.max().item(), y.max().item())) + 1
    top_sims, top_idx = running_topk(train.features, test.features, k, chunk, dev)
    votes = votes_from_neighbours(top_sims, train_y[top_idx], temperature, num_classes)
    ranked = votes.argsort(dim=1, descending=True, stable=True)
    hits1 = (ranked[:, 0] == y).sum().item()
    hits5 = (ranked[:, :5] == y[:, None]).any(dim=1).sum().item() if num_classes >= 5 else 0
    n = max(len(test), 1)
    return KNNResult(
        top1=100.0 * hits1 / n,
        top5=100.0 * hits5 / n if num_classes >= 5 else None,
        k=min(k, len(train)),
        temperature=temperature,
        num_train=len(train),
        num_test=len(test),
    )
