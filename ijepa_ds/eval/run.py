"""What ``ijepa-ds eval ACTION`` does: resolve settings, load, extract, evaluate, report.

Settings come from the flags, else from the run's ``config.yaml`` (when SOURCE belongs to a
run), else from defaults derived from the encoder and dataset. Problems a user can fix with a
flag raise ``ConfigError`` (printed without a traceback by the CLI).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ijepa_ds.backend.comm import abandon_distributed, shutdown_distributed
from ijepa_ds.config import Config, ConfigError
from ijepa_ds.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_dataset,
    build_eval_transform,
    default_root,
)
from ijepa_ds.distributed import detect_dist_env, init_process_group
from ijepa_ds.eval.args import EvalArgs
from ijepa_ds.eval.features import FeatureSet, cached_features
from ijepa_ds.eval.knn import knn_classify
from ijepa_ds.eval.linear import ProbeConfig, linear_probe
from ijepa_ds.eval.load import load_target_encoder, resolve_source, run_config
from ijepa_ds.eval.lowshot import lowshot_eval, summarize
from ijepa_ds.eval.report import markdown_table, write_report
from ijepa_ds.eval.visualize import render_pca_grid, write_png


@dataclass
class EvalSettings:
    """Resolved data and feature settings of one eval command."""

    dataset: str
    data_root: str
    crop_size: int
    resize_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_samples: int | None
    pool: str
    pos_interp: str
    batch_size: int
    device: str
    out: Path
    cache_dir: Path | None


def _stats(dataset: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Default normalisation: the dataset's statistics, adapted to the encoder's channels."""
    mean, std = (
        (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        if dataset == "fashion_mnist"
        else (IMAGENET_MEAN, IMAGENET_STD)
    )
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    if in_chans == 3:  # grey statistics for an RGB encoder: the image is replicated
        return tuple(mean) * 3, tuple(std) * 3
    return (sum(mean) / len(mean),), (sum(std) / len(std),)


def resolve_settings(args: EvalArgs, encoder, cfg: Config | None, run_dir) -> EvalSettings:
    """Flags < run config < derived defaults (see the module docstring)."""
    dataset = args.dataset or (cfg.data.dataset if cfg else None)
    if dataset is None:
        raise ConfigError(f"--dataset is required: {args.source} is not part of a run folder")
    same_data = cfg is not None and cfg.data.dataset == dataset
    root = args.data_root if args.data_root is not None else (cfg.data.root if same_data else "")
    crop = args.crop_size or (
        cfg.data.crop_size if cfg else encoder.grid_size[0] * encoder.patch_size
    )
    in_chans = encoder.patch_embed.proj.in_channels
    if args.mean is not None or args.std is not None:
        mean, std = tuple(args.mean or ()), tuple(args.std or ())
    elif same_data:
        mean, std = tuple(cfg.data.normalize_mean), tuple(cfg.data.normalize_std)
    else:
        mean, std = _stats(dataset, in_chans)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ConfigError(
            f"--mean/--std need {in_chans} values each (encoder in_chans), "
            f"got {len(mean)} and {len(std)}"
        )
    if args.out is None and run_dir is None:
        raise ConfigError(f"--out is required: {args.source} is not part of a run folder")
    out = Path(args.out) if args.out is not None else Path(run_dir) / "eval"
    eval_cfg = cfg.eval if cfg else Config().eval
    synthetic_default = cfg.data.synthetic_size if same_data and dataset == "synthetic" else None
    device = args.device or (
        f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    )
    return EvalSettings(
        dataset=dataset,
        data_root=root or (default_root(dataset) if dataset != "synthetic" else ""),
        crop_size=crop,
        resize_size=args.resize_size or (crop if dataset == "fashion_mnist" else None),
        mean=mean,
        std=std,
        num_samples=args.num_samples or synthetic_default,
        pool=args.pool or eval_cfg.feature_pool,
        pos_interp=args.pos_interp or encoder.pos_interp,
        batch_size=args.batch_size or eval_cfg.batch_size,
        device=device,
        out=out,
        cache_dir=None if args.no_cache else Path(args.cache_dir or out / "features"),
    )


def build_split(s: EvalSettings, train: bool):
    """The eval-transformed dataset split of ``s``."""
    transform = build_eval_transform(s.crop_size, s.resize_size, s.mean, s.std)
    num = None
    if s.dataset == "synthetic" and s.num_samples:
        num = s.num_samples if train else max(1, s.num_samples // 4)
    return build_dataset(s.dataset, s.data_root, train, transform, num_samples=num)


def split_features(encoder, s: EvalSettings, train: bool, num_workers: int) -> FeatureSet:
    data = build_split(s, train)
    return cached_features(
        encoder,
        data,
        cache_dir=s.cache_dir,
        dataset_id=f"{s.dataset}:{s.data_root}:{len(data)}",
        split="train" if train else "test",
        pool=s.pool,
        batch_size=s.batch_size,
        num_workers=num_workers,
        device=s.device,
    )


def probe_config(args: EvalArgs, eval_cfg, device: str) -> ProbeConfig:
    return ProbeConfig(
        lrs=tuple(args.lrs or eval_cfg.linear_lrs),
        wds=tuple(args.wds if args.wds is not None else eval_cfg.linear_wds),
        epochs=args.epochs or eval_cfg.linear_epochs,
        batch_size=args.probe_batch_size,
        optimizer=args.optimizer,
        batchnorm=not args.no_batchnorm,
        val_fraction=args.val_fraction,
        val_every=args.val_every if args.val_every is not None else eval_cfg.val_every_epochs,
        seed=args.seed,
        device=device,
    )


def _evaluate(args, eval_cfg, s: EvalSettings, train: FeatureSet, test: FeatureSet):
    """(rows, extra) of the linear / knn / lowshot action."""
    action = args.action
    temperature = args.temperature or eval_cfg.knn_temperature
    if action == "linear":
        result = linear_probe(train, test, probe_config(args, eval_cfg, s.device))
        row = {"pool": s.pool, **result.to_dict()}
        row.pop("sweep")
        return [row], {"sweep": result.sweep}
    if action == "knn":
        rows = [
            {"pool": s.pool, **knn_classify(train, test, k, temperature, device=s.device).to_dict()}
            for k in (args.k or (eval_cfg.knn_k,))
        ]
        return rows, None
    probe = probe_config(args, eval_cfg, s.device)
    per_seed = lowshot_eval(
        train,
        test,
        args.fractions or eval_cfg.low_shot_fractions,
        probe,
        k=args.k[0] if args.k else eval_cfg.knn_k,
        temperature=temperature,
        seeds=list(args.seeds) or [args.seed],
    )
    return summarize(per_seed), {"per_seed": per_seed}


def _visualize(args, encoder, s: EvalSettings):
    data = build_split(s, args.split == "train")
    n = min(args.num_images, len(data))
    imgs = torch.stack([data[i][0] for i in range(n)])
    upscale = args.upscale or max(1, 112 // s.crop_size)
    grid = render_pca_grid(encoder.to(s.device), imgs, s.mean, s.std, upscale, args.pairs_per_row)
    path = write_png(grid, s.out / f"pca_{args.split}.png")
    row = {"png": str(path), "images": n, "height": grid.shape[1], "width": grid.shape[2]}
    return [row], None


def _init_process_group():
    """A torch.distributed group when launched with several ranks; returns the DistEnv."""
    env = detect_dist_env()
    if env.world_size > 1 and not dist.is_initialized():
        init_process_group(env)
    return env


def run_eval_command(args: EvalArgs) -> int:
    """Run one ``ijepa-ds eval`` action; rank 0 writes ``<out>/<action>.{json,md}``."""
    start = time.perf_counter()
    try:
        env = _init_process_group()
        src = resolve_source(args.source)
        encoder, description = load_target_encoder(args.source, num_heads=args.num_heads)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from err
    try:
        cfg = run_config(src)
        s = resolve_settings(args, encoder, cfg, src.run_dir)
        encoder.pos_interp = s.pos_interp
        eval_cfg = cfg.eval if cfg else Config().eval
        if args.action != "visualize":
            train = split_features(encoder, s, True, args.num_workers)
            test = split_features(encoder, s, False, args.num_workers)
    except BaseException:
        abandon_distributed()  # no barrier: the other ranks may never arrive
        raise
    # The gathers were the last collectives. Only rank 0 evaluates, for as long as it takes
    # (every-token kNN at 64 px: 6 to over 10 minutes on 2 cores); a rank waiting for it in a
    # collective would be timed out by the group's timeout. So every rank leaves the group here,
    # and the others exit while rank 0 evaluates: an error there is still rank 0's exit status.
    shutdown_distributed()
    if not env.is_main_process:
        return 0  # (its gathered rows are freed as it exits: tokens at 64 px, 5.9 + 1.0 GB)
    if args.action == "visualize":
        result = _visualize(args, encoder, s)
    else:
        result = _evaluate(args, eval_cfg, s, train, test)
    _write(args, s, description, result, env.world_size, time.perf_counter() - start)
    return 0


def _write(
    args, s: EvalSettings, description: str, result, world_size: int, seconds: float
) -> None:
    rows, extra = result
    header = {
        "source": description,
        "dataset": f"{s.dataset} ({s.data_root or 'generated'})",
        "settings": {k: v for k, v in asdict(s).items() if k not in ("out", "cache_dir")},
        "world_size": world_size,
        "seconds": round(seconds, 1),
    }
    json_path, md_path = write_report(s.out, args.action, header, rows, extra=extra)
    print(markdown_table(rows), end="")
    print(f"wrote {json_path} and {md_path}")
