"""Cheap health statistics for the training loop, computed without gradients.

Representation collapse is the failure mode of joint-embedding methods: the encoder maps every
image to (nearly) the same features and the loss still falls. ``feature_std`` and
``effective_rank`` watch for it; ``grad_norm`` and ``memory_stats`` are the usual health signals.
All of them return Python numbers ready for ``MetricsWriter.log_scalars``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

import torch

_MIB = 1024.0 * 1024.0

try:  # psutil gives the current RSS; without it only the peak from `resource` is reported
    import psutil
except ImportError:  # pragma: no cover - psutil is installed in this project's environment
    psutil = None

try:
    import resource
except ImportError:  # pragma: no cover - not available on Windows
    resource = None


@torch.no_grad()
def feature_std(h: torch.Tensor) -> float:
    """Collapse signal: per-dimension std across the batch of the patch-averaged features.

    Args:
        h: ``[B, N, D]`` patch features (or ``[B, D]`` already pooled), B >= 2.

    Returns:
        The mean over D of ``std_b(mean_n h[b, n, :])``; 0 when every sample has the same
        features. For layer-normed targets a healthy run stays well above 0. Computed on the
        local batch only (no communication).
    """
    if h.dim() not in (2, 3):
        raise ValueError(f"feature_std expects [B, N, D] or [B, D], got shape {tuple(h.shape)}")
    if h.shape[0] < 2:
        raise ValueError(f"feature_std needs at least 2 samples, got batch size {h.shape[0]}")
    pooled = h.float().mean(dim=1) if h.dim() == 3 else h.float()
    return float(pooled.std(dim=0).mean())


@torch.no_grad()
def effective_rank(feats: torch.Tensor) -> float:
    """RankMe effective rank (Garrido et al., 2023) of a set of embeddings.

    Args:
        feats: ``[M, D]`` embeddings, one row per sample (use M >= D for a meaningful value).

    Returns:
        ``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s`` of ``feats``: D for
        isotropic features, 1 for rank-1 features, 0 for an all-zero matrix.
    """
    if feats.dim() != 2:
        raise ValueError(f"effective_rank expects [M, D], got shape {tuple(feats.shape)}")
    # SVD is not implemented for half types; float64 keeps the entropy exact for small inputs.
    s = torch.linalg.svdvals(feats.detach().to(torch.float64))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    entropy = -torch.special.xlogy(p, p).sum()
    return float(torch.exp(entropy))


@torch.no_grad()
def grad_norm(params: Iterable[torch.Tensor] | torch.Tensor) -> float:
    """Global L2 norm of the gradients that exist (parameters without ``.grad`` are skipped).

    This is the value ``torch.nn.utils.clip_grad_norm_`` returns, computed in fp32 and without
    modifying anything. With ZeRO-2/3 each rank holds only a partition of the gradients; use the
    engine's own global norm there.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    norms = [p.grad.detach().float().norm(2) for p in params if p.grad is not None]
    if not norms:
        return 0.0
    # Norms may live on different devices (CPU-offloaded params); gather them on the first one.
    device = norms[0].device
    return float(torch.stack([n.to(device) for n in norms]).norm(2))


def memory_stats(device: torch.device | int | None = None, reset_peak: bool = False) -> dict:
    """Memory use in MiB.

    With CUDA: ``max_allocated_mib``, ``max_reserved_mib`` (peaks since the last reset) and
    ``allocated_mib`` of ``device``; ``reset_peak=True`` then starts a new peak window, so each
    logging interval reports its own peak. Without CUDA: ``rss_mib`` (current resident set, via
    psutil) and ``max_rss_mib`` (process peak, via ``resource``), whichever is available.
    """
    if torch.cuda.is_available():
        out = {
            "max_allocated_mib": torch.cuda.max_memory_allocated(device) / _MIB,
            "max_reserved_mib": torch.cuda.max_memory_reserved(device) / _MIB,
            "allocated_mib": torch.cuda.memory_allocated(device) / _MIB,
        }
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)
        return out
    out: dict[str, float] = {}
    if psutil is not None:
        out["rss_mib"] = psutil.Process().memory_info().rss / _MIB
    if resource is not None:
        # ru_maxrss is in KiB on Linux but in bytes on macOS.
        unit = 1.0 if sys.platform == "darwin" else 1024.0
        out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / _MIB
    return out


def is_collapsed(std: float, threshold: float) -> bool:
    """True when ``std`` (from ``feature_std``) is below ``threshold`` or is not a number."""
    if threshold < 0:
        raise ValueError(f"collapse threshold must be >= 0, got {threshold}")
    # NaN features are as broken as collapsed ones: report them too.
    return math.isnan(std) or std < threshold
