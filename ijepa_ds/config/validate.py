"""Cross-field checks of a resolved `Config`, run before any process group or GPU work.

`validate_config` needs nothing but the config (and optionally the world size);
`validate_paths` checks the filesystem separately so a preset can be shown or planned on a
machine without the data. Every broken rule is reported as `field=value: rule`; all of them
are collected and raised together in one `ConfigError`.
"""

from __future__ import annotations

import difflib
import importlib.util
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ijepa_ds.config.schema import (
    ENCODER_DIMS,
    Config,
    ConfigError,
    DataConfig,
    iter_fields,
    resolve_data_root,
    resolve_model_dims,
)


def _unit_pair(v: tuple[float, float], c: Config) -> bool:
    return 0 < v[0] <= v[1] <= 1


def _positive_pair(v: tuple[float, float], c: Config) -> bool:
    return 0 < v[0] <= v[1]


def _per_channel(v: tuple[float, ...], c: Config) -> bool:
    return len(v) == c.model.in_chans


# (field, predicate(value, cfg), rule). The rule is formatted with c=cfg, so it can quote the
# other fields it involves.
Rule = tuple[str, Callable[[Any, Config], bool], str]
# fmt: off
_RULES: list[Rule] = [
    ("seed", lambda v, c: 0 <= v < 2**32, "must lie in [0, 2**32)"),
    # data
    ("data.crop_size", lambda v, c: v > 0, "must be > 0"),
    ("data.crop_scale", _unit_pair, "must be (min, max) with 0 < min <= max <= 1"),
    ("data.color_jitter_strength", lambda v, c: v >= 0, "must be >= 0"),
    ("data.normalize_mean", _per_channel, "needs one value per model.in_chans={c.model.in_chans}"),
    ("data.normalize_std", _per_channel, "needs one value per model.in_chans={c.model.in_chans}"),
    ("data.normalize_std", lambda v, c: all(s > 0 for s in v), "values must be > 0"),
    ("data.batch_size", lambda v, c: v > 0, "must be > 0"),
    ("data.global_batch_size", lambda v, c: v >= 0, "must be >= 0 (0 = batch_size x world size)"),
    ("data.global_batch_size", lambda v, c: c.data.batch_size <= 0 or v % c.data.batch_size == 0,
     "must be a multiple of data.batch_size={c.data.batch_size}"),
    ("data.num_workers", lambda v, c: v >= 0, "must be >= 0"),
    ("data.prefetch_factor", lambda v, c: v >= 1, "must be >= 1"),
    ("data.synthetic_size", lambda v, c: v >= 1, "must be >= 1"),
    ("data.synthetic_classes", lambda v, c: v >= 1, "must be >= 1"),
    ("data.synthetic_load_s", lambda v, c: v >= 0, "must be >= 0"),
    ("data.synthetic_load_s", lambda v, c: v == 0 or c.data.dataset == "synthetic",
     "applies to data.dataset=synthetic only, not {c.data.dataset!r}"),
    # mask
    ("mask.num_enc_masks", lambda v, c: v >= 1, "must be >= 1"),
    ("mask.num_pred_masks", lambda v, c: v >= 1, "must be >= 1"),
    ("mask.min_keep", lambda v, c: v >= 0, "must be >= 0"),
    ("mask.enc_mask_scale", _unit_pair, "must be (min, max) with 0 < min <= max <= 1"),
    ("mask.pred_mask_scale", _unit_pair, "must be (min, max) with 0 < min <= max <= 1"),
    ("mask.aspect_ratio", _positive_pair, "must be (min, max) with 0 < min <= max"),
    ("mask.group_size", lambda v, c: v >= 1, "must be >= 1"),
    # model
    ("model.patch_size", lambda v, c: v > 0, "must be > 0"),
    ("model.patch_size", lambda v, c: v <= 0 or c.data.crop_size % v == 0,
     "must divide data.crop_size={c.data.crop_size}"),
    ("model.in_chans", lambda v, c: v >= 1, "must be >= 1"),
    ("model.embed_dim", lambda v, c: v >= 0, "must be >= 0 (0 = preset)"),
    ("model.depth", lambda v, c: v >= 0, "must be >= 0 (0 = preset)"),
    ("model.num_heads", lambda v, c: v >= 0, "must be >= 0 (0 = preset)"),
    ("model.mlp_ratio", lambda v, c: v >= 0, "must be >= 0 (0 = preset)"),
    ("model.drop_path_rate", lambda v, c: 0 <= v < 1, "must lie in [0, 1)"),
    ("model.norm_eps", lambda v, c: v > 0, "must be > 0"),
    ("model.init_std", lambda v, c: v > 0, "must be > 0"),
    ("model.context_chunks", lambda v, c: v >= 1, "must be >= 1 (1 = one padded forward)"),
    ("model.pred_depth", lambda v, c: v >= 1, "must be >= 1"),
    ("model.pred_emb_dim", lambda v, c: v >= 1, "must be >= 1"),
    ("model.pred_num_heads", lambda v, c: v >= 0, "must be >= 0 (0 = encoder heads)"),
    ("model.act_ckpt_encoder", lambda v, c: v >= 0, "must be >= 0 (0 = off)"),
    ("model.act_ckpt_predictor", lambda v, c: v >= 0, "must be >= 0 (0 = off)"),
    ("model.act_ckpt_cpu_offload",
     lambda v, c: not v or c.model.act_ckpt_encoder > 0 or c.model.act_ckpt_predictor > 0,
     "offloads the inputs of checkpointed blocks only: needs model.act_ckpt_encoder or "
     "model.act_ckpt_predictor > 0 (are {c.model.act_ckpt_encoder} and "
     "{c.model.act_ckpt_predictor})"),
    # optim, schedule, ema
    ("optim.betas", lambda v, c: all(0 <= b < 1 for b in v), "must lie in [0, 1)"),
    ("optim.eps", lambda v, c: v > 0, "must be > 0"),
    ("optim.gradient_clipping", lambda v, c: v >= 0, "must be >= 0 (0 = off)"),
    ("schedule.epochs", lambda v, c: v > 0, "must be > 0"),
    ("schedule.warmup_epochs", lambda v, c: 0 <= v <= c.schedule.epochs,
     "must lie in [0, schedule.epochs={c.schedule.epochs}]"),
    ("schedule.start_lr", lambda v, c: v >= 0, "must be >= 0"),
    ("schedule.lr", lambda v, c: v >= 0, "must be >= 0"),
    ("schedule.final_lr", lambda v, c: 0 <= v <= c.schedule.lr,
     "must lie in [0, schedule.lr={c.schedule.lr}]"),
    ("schedule.weight_decay", lambda v, c: v >= 0, "must be >= 0"),
    ("schedule.final_weight_decay", lambda v, c: v >= 0, "must be >= 0"),
    ("schedule.ipe_scale", lambda v, c: v > 0, "must be > 0"),
    ("schedule.max_steps", lambda v, c: v >= 0, "must be >= 0 (0 = all epochs)"),
    ("ema.momentum_start", lambda v, c: 0 <= v <= 1, "must lie in [0, 1]"),
    ("ema.momentum_end", lambda v, c: 0 <= v <= 1, "must lie in [0, 1]"),
    ("ema.momentum_start", lambda v, c: v <= c.ema.momentum_end,
     "must be <= ema.momentum_end={c.ema.momentum_end}"),
    # logging, checkpoint, deepspeed
    ("logging.output_dir", lambda v, c: bool(v), "must not be empty"),
    ("logging.log_every", lambda v, c: v >= 1, "must be >= 1"),
    ("logging.image_every", lambda v, c: v >= 0, "must be >= 0 (0 = off)"),
    ("logging.wandb_project", lambda v, c: bool(v) or not c.logging.wandb,
     "must not be empty with logging.wandb=true"),
    ("logging.wandb_tags", lambda v, c: all(1 <= len(t) <= 64 for t in v),
     "each tag must have 1 to 64 characters (a W&B limit)"),
    ("checkpoint.every_steps", lambda v, c: v >= 0, "must be >= 0 (0 = off)"),
    ("checkpoint.every_minutes", lambda v, c: v >= 0, "must be >= 0 (0 = off)"),
    ("checkpoint.keep_last", lambda v, c: v >= 1, "must be >= 1"),
    ("checkpoint.milestone_every", lambda v, c: v >= 0, "must be >= 0 (0 = off)"),
    ("deepspeed.config", lambda v, c: bool(v), "must name a ds_configs/ file or a JSON path"),
    ("deepspeed.zero_stage", lambda v, c: v in (-1, 0, 1, 2, 3),
     "must be -1 (from the JSON), 0, 1, 2 or 3"),
    ("deepspeed.offload_param", lambda v, c: not v or c.deepspeed.zero_stage in (-1, 3),
     "needs ZeRO stage 3 (deepspeed.zero_stage={c.deepspeed.zero_stage})"),
    ("deepspeed.offload_optimizer", lambda v, c: not v or c.deepspeed.zero_stage != 0,
     "needs ZeRO stage >= 1 (deepspeed.zero_stage={c.deepspeed.zero_stage})"),
    # eval
    ("eval.knn_k", lambda v, c: v >= 1, "must be >= 1"),
    ("eval.knn_temperature", lambda v, c: v > 0, "must be > 0"),
    ("eval.linear_lrs", lambda v, c: len(v) > 0 and all(x > 0 for x in v),
     "must be a non-empty list of values > 0"),
    ("eval.linear_wds", lambda v, c: len(v) > 0 and all(x >= 0 for x in v),
     "must be a non-empty list of values >= 0"),
    ("eval.linear_epochs", lambda v, c: v >= 1, "must be >= 1"),
    ("eval.batch_size", lambda v, c: v >= 1, "must be >= 1"),
    ("eval.val_every_epochs", lambda v, c: v >= 0, "must be >= 0 (0 = only at the end)"),
    ("eval.low_shot_fractions", lambda v, c: all(0 < x <= 1 for x in v), "must lie in (0, 1]"),
    ("eval.best_metric", lambda v, c: v != "knn" or c.eval.health_every_steps > 0,
     "needs eval.health_every_steps > 0 (the online kNN check it reads)"),
]
# fmt: on


def _get(cfg: Config, path: str) -> Any:
    obj: Any = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _check_choices(cfg: Config) -> list[str]:
    errors = []
    for info in iter_fields():
        choices = typing.get_args(info.type) if typing.get_origin(info.type) is Literal else ()
        value = _get(cfg, info.path)
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{info.path}={value!r}: must be one of {list(choices)}{hint}")
    return errors


def _check_wandb_package(cfg: Config) -> list[str]:
    """logging.wandb=true needs the optional wandb package; looked up, not imported (every
    rank validates, only rank 0 uses it)."""
    if cfg.logging.wandb and importlib.util.find_spec("wandb") is None:
        return [
            "logging.wandb=True: needs the wandb package (pip install 'ijepa-ds[wandb]'), "
            "or set logging.wandb=false"
        ]
    return []


def _check_act_ckpt_package(cfg: Config) -> list[str]:
    """model.act_ckpt_impl=fairscale needs the optional fairscale package; looked up, not
    imported, so a launcher reports it before it starts a single process."""
    if cfg.model.act_ckpt_impl != "fairscale" or importlib.util.find_spec("fairscale"):
        return []
    return [
        "model.act_ckpt_impl='fairscale': needs the fairscale package, which is not installed "
        "(pip install '.[fairscale]' in the repository, or pip install 'fairscale>=0.4.13,<0.5'), "
        "or choose act_ckpt_impl torch or deepspeed"
    ]


def _check_heads(cfg: Config) -> list[str]:
    """Widths divisible by head counts, after resolving the preset defaults."""
    if cfg.model.name not in ENCODER_DIMS:
        return []  # reported by _check_choices
    d, m = resolve_model_dims(cfg.model), cfg.model
    errors = []
    if d.num_heads > 0 and d.embed_dim % d.num_heads:
        errors.append(
            f"model.embed_dim={m.embed_dim!r}: the encoder width {d.embed_dim} must be "
            f"divisible by the encoder heads {d.num_heads} (model.num_heads={m.num_heads})"
        )
    if d.pred_num_heads > 0 and m.pred_emb_dim % d.pred_num_heads:
        errors.append(
            f"model.pred_emb_dim={m.pred_emb_dim!r}: must be divisible by the predictor heads "
            f"{d.pred_num_heads} (model.pred_num_heads={m.pred_num_heads}; 0 = encoder heads)"
        )
    return errors


def check_mask_settings(
    sampler: str,
    grid_h: int,
    grid_w: int,
    enc_scale: tuple[float, float],
    pred_scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
    nenc: int,
    npred: int,
    min_keep: int,
    allow_overlap: bool,
) -> list[str]:
    """Feasibility of mask settings on a grid_h x grid_w patch grid, by the exact rules of the
    sampler that ``mask.sampler`` selects (the samplers' own validators, so the config accepts
    exactly what the sampler can draw in bounded time). Returns messages; empty when feasible.
    """
    from ijepa_ds.masks.geometry import validate_mask_settings

    try:
        if sampler == "reference":
            from ijepa_ds.masks.reference import validate_reference_settings

            validate_reference_settings(
                grid_h, grid_w, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep
            )
        else:
            validate_mask_settings(
                grid_h, grid_w, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep,
                allow_overlap,
            )  # fmt: skip
    except ValueError as err:
        return [str(err)]
    return []


def resolved_global_batch(data: DataConfig, world_size: int) -> int:
    """Images per optimizer step: ``data.global_batch_size``, or batch_size x world size when
    it is 0 (the field's default: no accumulation). The one place that default is spelled."""
    return data.global_batch_size or data.batch_size * world_size


def gradient_accumulation_steps(data: DataConfig, world_size: int) -> int:
    """Micro-batches per optimizer step: global / (batch_size * world_size); 1 when global is 0.

    Raises ConfigError when the global batch is not a multiple of batch_size * world_size.
    """
    if world_size < 1:
        raise ConfigError(f"world size {world_size} must be >= 1")
    per_step = data.batch_size * world_size
    if data.global_batch_size == 0:
        return 1
    if per_step <= 0 or data.global_batch_size % per_step:
        raise ConfigError(
            f"data.global_batch_size={data.global_batch_size} must be a multiple of "
            f"data.batch_size={data.batch_size} x world size {world_size} = {per_step}"
        )
    return data.global_batch_size // per_step


def check_mask_groups(cfg: Config, world_size: int | None) -> list[str]:
    """``mask.context_policy=group_min``: groups of ``mask.group_size`` must tile every step, so
    a group size below the global batch must divide it. The global batch is known when
    ``data.global_batch_size`` is set, or from ``world_size``; a larger group is the step."""
    m = cfg.mask
    if m.sampler != "step_seeded" or m.context_policy != "group_min":
        return []
    if not cfg.data.global_batch_size and world_size is None:
        return []
    global_batch = resolved_global_batch(cfg.data, world_size or 1)
    if m.group_size >= global_batch or global_batch % m.group_size == 0:
        return []
    source = (
        f"data.global_batch_size={cfg.data.global_batch_size}"
        if cfg.data.global_batch_size
        else f"data.batch_size={cfg.data.batch_size} x world size {world_size}"
    )
    return [
        f"mask.group_size={m.group_size}: must divide the global batch {global_batch} "
        f"({source}) with mask.context_policy=group_min, so that groups tile every step"
    ]


def _raise(errors: list[str]) -> None:
    if len(errors) == 1:
        raise ConfigError(f"Invalid config: {errors[0]}")
    if errors:
        raise ConfigError("Invalid config:\n" + "\n".join(f"  - {e}" for e in errors))


def validate_config(cfg: Config, world_size: int | None = None) -> None:
    """Check every cross-field rule; raise one ConfigError listing all broken rules.

    Args:
        cfg: a resolved config (from `load_config`).
        world_size: number of ranks; when given, the global batch must split into
            micro-batches of data.batch_size on each of the world_size ranks.
    """
    errors = _check_choices(cfg)
    for path, ok, rule in _RULES:
        value = _get(cfg, path)
        if not ok(value, cfg):
            errors.append(f"{path}={value!r}: {rule.format(c=cfg)}")
    errors += _check_heads(cfg)
    errors += _check_wandb_package(cfg)
    errors += _check_act_ckpt_package(cfg)
    if not errors:  # the rest assumes a valid grid, valid ranges and batch sizes
        m = cfg.mask
        grid = cfg.data.crop_size // cfg.model.patch_size
        errors += check_mask_settings(
            m.sampler, grid, grid, m.enc_mask_scale, m.pred_mask_scale, m.aspect_ratio,
            m.num_enc_masks, m.num_pred_masks, m.min_keep, m.allow_overlap,
        )  # fmt: skip
    if world_size is not None and not errors:
        try:
            gradient_accumulation_steps(cfg.data, world_size)
        except ConfigError as exc:
            errors.append(str(exc))
    if not errors:
        errors += check_mask_groups(cfg, world_size)
    _raise(errors)


def validate_paths(cfg: Config) -> None:
    """Check that the dataset folder exists (fashion_mnist and image_folder datasets)."""
    if cfg.data.dataset == "synthetic":
        return
    root = resolve_data_root(cfg.data)
    if not root:
        _raise([f"data.root={cfg.data.root!r}: the {cfg.data.dataset} dataset needs its folder"])
    if not Path(root).is_dir():
        _raise([f"data.root={cfg.data.root!r}: dataset folder {root} does not exist"])
