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


def votes_from_similarities(
    sims: torch.Tensor, train_y: torch.Tensor, k: int, temperature: float, num_classes: int
) -> torch.Tensor:
    """Class votes [M, C] from similarities sims [M, N] of M test rows to N train rows with
    labels train_y [N] (the vote of ``knn_votes``, for callers that build sims themselves)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
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


def knn_classify(
    train: FeatureSet,
    test: FeatureSet,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 512,
    device: str = "cpu",
) -> KNNResult:
    """Top-1/top-5 of the weighted kNN vote, test rows processed ``chunk`` at a time."""
    dev = torch.device(device)
    train_x, train_y = train.features.to(dev), train.labels.to(dev)
    if num_classes is None:
        num_classes = int(max(train_y.max().item(), test.labels.max().item())) + 1
    hits1 = hits5 = 0
    for start in range(0, len(test), chunk):
        x = test.features[start : start + chunk].to(dev)
        y = test.labels[start : start + chunk].to(dev)
        votes = knn_votes(train_x, train_y, x, k, temperature, num_classes)
        ranked = votes.argsort(dim=1, descending=True, stable=True)
        hits1 += (ranked[:, 0] == y).sum().item()
        if num_classes >= 5:
            hits5 += (ranked[:, :5] == y[:, None]).any(dim=1).sum().item()
    n = max(len(test), 1)
    return KNNResult(
        top1=100.0 * hits1 / n,
        top5=100.0 * hits5 / n if num_classes >= 5 else None,
        k=min(k, len(train)),
        temperature=temperature,
        num_train=len(train),
        num_test=len(test),
    )
