"""Health statistics: collapse signals, gradient norm, memory."""

from __future__ import annotations

import math

import pytest
import torch

from ijepa_ds.observability.stats import (
    effective_rank,
    feature_std,
    grad_norm,
    is_collapsed,
    memory_stats,
)


def test_feature_std_zero_when_collapsed_positive_when_random() -> None:
    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 16, 32, generator=g)
    collapsed = one.expand(8, 16, 32).clone()
    assert feature_std(collapsed) == pytest.approx(0.0, abs=1e-6)
    # Patch means of N(0, 1) over 16 patches have std 1/4 across samples.
    random = torch.randn(512, 16, 32, generator=g)
    assert feature_std(random) == pytest.approx(0.25, rel=0.05)


def test_feature_std_ignores_variation_across_patches_only() -> None:
    # Every sample has the same patch pattern: patches differ, samples do not -> collapsed.
    patches = torch.randn(1, 10, 4).expand(6, 10, 4)
    assert feature_std(patches) == pytest.approx(0.0, abs=1e-6)
    pooled = 3 * torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    assert feature_std(pooled) == pytest.approx(3.0, rel=0.2)  # [B, D] is taken as pooled


def test_feature_std_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_std(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        feature_std(torch.randn(8))


def test_effective_rank_isotropic_rank_one_and_zero() -> None:
    g = torch.Generator().manual_seed(0)
    d = 32
    iso = torch.randn(8192, d, generator=g)
    assert effective_rank(iso) == pytest.approx(d, rel=0.01)
    rank1 = torch.randn(500, 1, generator=g) @ torch.randn(1, d, generator=g)
    assert effective_rank(rank1) == pytest.approx(1.0, abs=1e-3)
    # Two equal non-zero singular values -> exactly 2.
    two = torch.zeros(10, d)
    two[0, 0], two[1, 1] = 3.0, 3.0
    assert effective_rank(two) == pytest.approx(2.0)
    assert effective_rank(torch.zeros(10, d)) == 0.0
    assert effective_rank(iso.to(torch.bfloat16)) == pytest.approx(d, rel=0.02)


def _model_with_grads() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))
    model(torch.randn(4, 6)).square().sum().backward()
    return model


def test_grad_norm_matches_clip_grad_norm_total_and_modifies_nothing() -> None:
    model = _model_with_grads()
    model.add_module("frozen", torch.nn.Linear(2, 2))  # params without .grad are skipped
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    by_hand = math.sqrt(sum(float(g.square().sum()) for g in grads))
    ours = grad_norm(model.parameters())
    assert ours == pytest.approx(by_hand, rel=1e-6)
    after = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(grads, after, strict=True))
    # clip_grad_norm_ with an infinite max_norm returns the total norm and clips nothing.
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf)
    assert ours == pytest.approx(float(total), rel=1e-6)


def test_grad_norm_without_grads_and_single_tensor() -> None:
    assert grad_norm(torch.nn.Linear(3, 3).parameters()) == 0.0
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.tensor([3.0, 0.0, 4.0])
    assert grad_norm(p) == pytest.approx(5.0)


def test_memory_stats_reports_positive_mib() -> None:
    stats = memory_stats()
    expected = (
        {"max_allocated_mib", "max_reserved_mib"}
        if torch.cuda.is_available()
        else {
            "rss_mib",
            "max_rss_mib",
        }
    )
    assert expected <= stats.keys()
    assert all(v > 0 for k, v in stats.items() if k != "allocated_mib")
    if not torch.cuda.is_available():
        # A process that imported torch is tens of MiB, far below 1 TiB: the units are right.
        assert 10 < stats["rss_mib"] <= stats["max_rss_mib"] * 1.01 < 1024 * 1024


def test_is_collapsed() -> None:
    assert is_collapsed(1e-5, 1e-3)
    assert not is_collapsed(0.2, 1e-3)
    assert is_collapsed(float("nan"), 1e-3)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        is_collapsed(0.1, -1.0)
