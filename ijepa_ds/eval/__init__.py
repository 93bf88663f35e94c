"""Evaluation of a frozen target encoder: features, linear probe, k-NN, low-shot, PCA maps.

``ijepa-ds eval ACTION SOURCE`` (``ijepa_ds.cli.eval_cmd``) drives these; ``run`` holds the
command logic, the other modules are usable on their own.
"""

from ijepa_ds.eval.features import (
    POOLS,
    FeatureSet,
    cached_features,
    encoder_fingerprint,
    extract_features,
    pool_features,
    pool_width,
)
from ijepa_ds.eval.knn import KNNResult, knn_classify, knn_votes
from ijepa_ds.eval.linear import ProbeConfig, ProbeResult, linear_probe, split_train_val
from ijepa_ds.eval.load import ACCEPTED, Source, SourceError, load_target_encoder, resolve_source
from ijepa_ds.eval.lowshot import lowshot_eval, lowshot_indices, per_class_count, summarize
from ijepa_ds.eval.report import markdown_table, write_report
from ijepa_ds.eval.visualize import pca_rgb, render_pca_grid, write_png

__all__ = [
    "ACCEPTED",
    "POOLS",
    "FeatureSet",
    "KNNResult",
    "ProbeConfig",
    "ProbeResult",
    "Source",
    "SourceError",
    "cached_features",
    "encoder_fingerprint",
    "extract_features",
    "knn_classify",
    "knn_votes",
    "linear_probe",
    "load_target_encoder",
    "lowshot_eval",
    "lowshot_indices",
    "markdown_table",
    "pca_rgb",
    "per_class_count",
    "pool_features",
    "pool_width",
    "render_pca_grid",
    "resolve_source",
    "split_train_val",
    "summarize",
    "write_png",
    "write_report",
]
