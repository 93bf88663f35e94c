"""Observability: rank-aware logging, progress line, metrics sinks and health statistics."""

from ijepa_ds.observability.logging import get_logger, rank_log_file, reset_logging, setup_logging
from ijepa_ds.observability.metrics import MetricsWriter
from ijepa_ds.observability.nonfinite import NonFiniteLossError, check_finite
from ijepa_ds.observability.progress import ProgressMeter, format_eta
from ijepa_ds.observability.stats import (
    effective_rank,
    feature_std,
    grad_norm,
    is_collapsed,
    memory_stats,
)

__all__ = [
    "MetricsWriter",
    "NonFiniteLossError",
    "ProgressMeter",
    "check_finite",
    "effective_rank",
    "feature_std",
    "format_eta",
    "get_logger",
    "grad_norm",
    "is_collapsed",
    "memory_stats",
    "rank_log_file",
    "reset_logging",
    "setup_logging",
]
