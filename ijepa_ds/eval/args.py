"""What one ``ijepa-ds eval`` action is asked to do: typed arguments, parsed by the CLI.

``None`` (or ``()``) means "not given": the setting then comes from the run's config when
SOURCE belongs to a run, else from defaults derived from the encoder and dataset
(``eval.run.resolve_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("linear", "knn", "lowshot", "visualize")
POS_INTERP = ("sincos", "bicubic")  # ijepa_ds.models.pos_embed.POS_INTERP_MODES, torch-free


@dataclass(frozen=True)
class EvalArgs:
    """Arguments of one eval action (see ``ijepa-ds eval ACTION --help`` for each).

    Data and features: source, dataset, data_root, crop_size, resize_size, mean, std,
    num_samples (synthetic train images; test gets a quarter), out, num_heads, pos_interp
    (positions for an eval grid other than the encoder's: "sincos" or "bicubic"), pool,
    batch_size, num_workers, device, cache_dir, no_cache, seed. Linear probe (linear,
    lowshot): lrs, wds, epochs, val_every, val_fraction, optimizer, probe_batch_size,
    no_batchnorm. k-NN: k (knn: one result per k; lowshot: the first), temperature.
    lowshot: fractions, seeds. visualize: split, num_images, upscale, pairs_per_row.
    """

    action: str
    source: str
    dataset: str | None = None
    data_root: str | None = None
    crop_size: int | None = None
    resize_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_samples: int | None = None
    out: str | None = None
    num_heads: int | None = None
    pos_interp: str | None = None
    pool: str | None = None
    batch_size: int | None = None
    num_workers: int = 0
    device: str | None = None
    cache_dir: str | None = None
    no_cache: bool = False
    seed: int = 0
    lrs: tuple[float, ...] = ()
    wds: tuple[float, ...] | None = None
    epochs: int | None = None
    val_every: int | None = None
    val_fraction: float = 0.1
    optimizer: str = "sgd"
    probe_batch_size: int = 256
    no_batchnorm: bool = False
    k: tuple[int, ...] = ()
    temperature: float | None = None
    fractions: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    split: str = "test"
    num_images: int = 16
    upscale: int | None = None
    pairs_per_row: int = 4

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"eval action {self.action!r}: expected one of {ACTIONS}")
        if self.pos_interp is not None and self.pos_interp not in POS_INTERP:
            raise ValueError(f"--pos-interp {self.pos_interp!r}: expected one of {POS_INTERP}")
        if self.pool == "tokens" and self.action != "knn":
            raise ValueError(
                f"--pool tokens is for knn only, not {self.action}: it is every token of every "
                "image (h w D values each, kept in fp16); use grid2 or last4 for a linear probe"
            )
