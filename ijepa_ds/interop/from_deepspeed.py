"""A DeepSpeed run checkpoint -> one consolidated fp32 dict (see `consolidated`).

Reads the trainer's layout (`ijepa_ds.checkpoint.layout`): `<run>/config.yaml` (architecture),
`<run>/checkpoints/latest`, and per step folder `engine/` (engine.save_checkpoint,
tag "engine"), `target_encoder.pt` ({"state_dict": fp32}), `train_state.pt` (step, epoch, ...).

- Student weights and AdamW moments come from the engine folder (`zero_checkpoint`, ZeRO 0-3,
  every file checked with `weights_only=True` first); they are put into the 4 reference AdamW
  groups of the config's model, which must hold exactly those parameters.
- Sin-cos tables are REGENERATED, never read: zero_to_fp32 drops frozen parameters at ZeRO 1/2
  and returns them in bf16 at ZeRO 3.
"""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ijepa_ds.backend.param_groups import build_param_groups
from ijepa_ds.checkpoint.layout import (
    CHECKPOINTS,
    COMPLETE,
    ENGINE_TAG,
    STATE_FILE,
    TARGET_FILE,
    read_latest,
)
from ijepa_ds.config import config_to_dict, load_config
from ijepa_ds.interop.consolidated import empty_models, make_consolidated, safe_torch_load
from ijepa_ds.interop.zero_checkpoint import POS_TABLES, Progress, read_engine
from ijepa_ds.models import get_2d_sincos_pos_embed
from ijepa_ds.models.from_config import encoder_kwargs_from_config, predictor_kwargs_from_config


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_step_dir(path: str | Path) -> Path:
    """A step folder as is; a run folder -> the step folder its `checkpoints/latest` names."""
    path = Path(path)
    if (path / ENGINE_TAG).is_dir():
        step_dir = path
    elif (path / CHECKPOINTS).is_dir():
        step_dir = read_latest(path)
        if step_dir is None:
            raise ValueError(f"{path}: run folder without {CHECKPOINTS}/latest: no checkpoint yet")
    else:
        raise ValueError(
            f"{path}: expected a run folder (with {CHECKPOINTS}/latest) or a step folder "
            f"(with {ENGINE_TAG}/, {TARGET_FILE}, {STATE_FILE})"
        )
    if not (step_dir / COMPLETE).is_file():
        raise ValueError(f"{step_dir}: incomplete checkpoint (no {COMPLETE} marker)")
    return step_dir


def _reference_names(encoder, predictor) -> list[list[str]]:
    """Trainable parameter names ("encoder.<key>") of the 4 reference AdamW groups, in order."""
    names = {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}
    names.update({id(p): f"predictor.{n}" for n, p in predictor.named_parameters()})
    return [[names[id(p)] for p in g["params"]] for g in build_param_groups(encoder, predictor)]


def _fill_tables(module: torch.nn.Module, part: str, found: Mapping[str, torch.Tensor], where):
    """`module`'s state dict (reference key order) from `found`, sin-cos table regenerated."""
    expected = module.state_dict()
    unknown = sorted(set(found) - set(expected))
    if unknown:
        raise ValueError(f"{where}: {part} weights the config's model lacks: {unknown[:5]}")
    out = {}
    for key, meta in expected.items():
        if key == POS_TABLES[part]:
            out[key] = get_2d_sincos_pos_embed(meta.shape[-1], module.grid_size).unsqueeze(0)
        elif key not in found:
            raise ValueError(f"{where}: no {part} weight {key!r} (does config.yaml match?)")
        elif tuple(found[key].shape) != tuple(meta.shape):
            raise ValueError(
                f"{where}: {part}.{key} has shape {tuple(found[key].shape)}, the config's model "
                f"{tuple(meta.shape)}"
            )
        else:
            out[key] = found[key]
    return out


def _split(weights: Mapping[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The `part.`-prefixed entries of a student state dict, prefix removed."""
    return {k.removeprefix(part + "."): v for k, v in weights.items() if k.startswith(part + ".")}


def _optimizer(state: dict, hyper: list[dict], saved: list[list[str]], names: list[list[str]]):
    if len(hyper) != len(names) or any(set(s) != set(n) for s, n in zip(saved, names)):
        raise ValueError("the checkpoint's optimizer groups do not hold the 4 reference groups")
    groups = [
        {**{k: v for k, v in h.items() if k != "params"}, "params": list(n)}
        for h, n in zip(hyper, names)
    ]
    return {"param_groups": groups, "state": {n: state[n] for g in names for n in g if n in state}}


def _run_config(step_dir: Path):
    """(config, encoder kwargs, predictor kwargs) of the run a step folder belongs to."""
    config_path = step_dir.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{config_path} not found: the run's config gives the architecture")
    cfg = load_config(str(config_path))
    return cfg, encoder_kwargs_from_config(cfg), predictor_kwargs_from_config(cfg)


def _target_state(step_dir: Path, encoder) -> dict[str, torch.Tensor]:
    """The step's fp32 target encoder state dict (memory-mapped, in reference key order)."""
    target = safe_torch_load(step_dir / TARGET_FILE, "target encoder file")
    if not isinstance(target, Mapping) or not isinstance(target.get("state_dict"), Mapping):
        raise ValueError(f"{step_dir / TARGET_FILE}: expected a dict with a 'state_dict'")
    target_sd = {k.removeprefix("module."): v.float() for k, v in target["state_dict"].items()}
    return _fill_tables(encoder, "encoder", target_sd, str(step_dir / TARGET_FILE))


def deepspeed_target_encoder(path: str | Path) -> dict[str, Any]:
    """The target encoder of a run or step folder: {"target_encoder", "encoder_kwargs",
    "step", "epoch"}, reading only ``target_encoder.pt`` (memory-mapped), the train state and
    the run's config: what a timm export needs, without the student's or optimizer's shards."""
    step_dir = resolve_step_dir(path)
    _, enc_kw, pred_kw = _run_config(step_dir)
    encoder, _ = empty_models(enc_kw, pred_kw)
    train_state = safe_torch_load(step_dir / STATE_FILE, "train state")
    return {
        "target_encoder": _target_state(step_dir, encoder),
        "encoder_kwargs": enc_kw,
        "step": int(train_state["step"]),
        "epoch": int(train_state["epoch"]),
    }


def consolidate_deepspeed(
    path: str | Path, with_optimizer: bool = True, progress: Progress | None = _stderr
) -> dict[str, Any]:
    """Consolidated checkpoint dict (see `consolidated`) from a run or step folder.

    Args:
        path: a step folder, or a run folder (its `checkpoints/latest` is used).
        with_optimizer: also gather the AdamW moments (`optimizer`); None when False.
        progress: called with one line per file read and a tensor counter (None: silent).
    """
    step_dir = resolve_step_dir(path)
    cfg, enc_kw, pred_kw = _run_config(step_dir)
    encoder, predictor = empty_models(enc_kw, pred_kw)
    names = _reference_names(encoder, predictor)
    weights, state, hyper, saved, stage = read_engine(step_dir, names, with_optimizer, progress)
    stray = sorted(k for k in weights if not k.startswith(("encoder.", "predictor.")))
    if stray:
        raise ValueError(f"{step_dir}: weights outside the encoder and predictor: {stray[:5]}")
    train_state = safe_torch_load(step_dir / STATE_FILE, "train state")
    where = str(step_dir)
    return make_consolidated(
        _fill_tables(encoder, "encoder", _split(weights, "encoder"), where),
        _fill_tables(predictor, "predictor", _split(weights, "predictor"), where),
        _target_state(step_dir, encoder),
        enc_kw,
        pred_kw,
        config=config_to_dict(cfg),
        step=int(train_state["step"]),
        epoch=int(train_state["epoch"]),
        optimizer=_optimizer(state, hyper, saved, names) if with_optimizer else None,
        metadata={
            "world_size": int(train_state.get("world_size", 0)),
            "zero_stage": stage,
            "batch_size": cfg.data.batch_size,
            "lr": cfg.schedule.lr,
            "source": where,
        },
    )
