"""A DeepSpeed run checkpoint -> one consolidated fp32 dict (see `consolidated`).

Reads the trainer's layout (`ijepa_ds.checkpoint.layout`): `<run>/config.yaml` (architecture),
`<run>/checkpoints/latest`, and per step folder `engine/` (engine.save_checkpoint,
tag "engine"), `target_encoder.pt` ({"state_dict": fp32}), `train_state.pt` (step, epoch, ...).

- Student weights, ZeRO 1-3: DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` in lazy
  mode, materialised one tensor at a time (ZeRO-3 gathers per parameter; at ZeRO 1/2
  DeepSpeed itself concatenates each group's partitions first). ZeRO 0: the module weights of
  fp32 runs, the fp32 masters of DeepSpeed's bf16 wrapper otherwise.
- Sin-cos tables are REGENERATED, never read: zero_to_fp32 drops frozen parameters at ZeRO 1/2
  and returns them in bf16 at ZeRO 3.
- AdamW moments, ZeRO 0-3: a rank's flat `exp_avg`/`exp_avg_sq` partition is laid out like its
  fp32 master partition, so one walk over the saved parameter shapes (ZeRO 1/2 alignment
  paddings, ZeRO-3 per-parameter padding) cuts them into parameters. Refused with a message:
  ZeRO 1/2 `elastic_checkpoint` states and optimizer states without `exp_avg`.
- Every DeepSpeed file is first read with `weights_only=True` (DeepSpeed's own plain data
  classes allowlisted): a file that would run code is refused before DeepSpeed's reader, which
  unpickles without that check, opens it.
"""

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ijepa_ds.checkpoint.layout import (
    CHECKPOINTS,
    COMPLETE,
    ENGINE_TAG,
    STATE_FILE,
    TARGET_FILE,
    read_latest,
)
from ijepa_ds.config import config_to_dict, load_config
from ijepa_ds.interop.arch import encoder_kwargs_from_config, predictor_kwargs_from_config
from ijepa_ds.interop.consolidated import empty_models, make_consolidated, safe_torch_load
from ijepa_ds.models import get_2d_sincos_pos_embed
from ijepa_ds.train.param_groups import build_param_groups

Progress = Callable[[str], None]
POS_TABLES = {"encoder": "pos_embed", "predictor": "predictor_pos_embed"}


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


def _load_ds_file(path: Path, progress: Progress | None) -> Any:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    if progress:
        progress(f"reading {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    with torch.serialization.safe_globals(allowed):
        return safe_torch_load(path, "DeepSpeed checkpoint file", mmap=True)


def _rank_files(engine_dir: Path, pattern: str) -> list[Path]:
    from deepspeed.utils.zero_to_fp32 import natural_keys

    return sorted(engine_dir.glob(pattern), key=lambda p: natural_keys(p.name))


def _slice(parts: list[torch.Tensor], start: int, length: int) -> torch.Tensor:
    """[length] elements from `start` of the concatenation of the 1-D `parts` (not built)."""
    pieces, offset = [], 0
    for part in parts:
        lo, hi = max(start, offset), min(start + length, offset + part.numel())
        if lo < hi:
            pieces.append(part[lo - offset : hi - offset])
        offset += part.numel()
    out = torch.cat(pieces) if pieces else torch.empty(0)
    if out.numel() != length:
        raise ValueError(
            f"flat partitions end at {offset}, need elements {start}..{start + length}"
        )
    return out


def _moments(state: Mapping[int, Any], index: int) -> Mapping[str, torch.Tensor] | None:
    entry = state.get(index)
    if entry is None:
        return None  # the optimizer never stepped
    if "exp_avg" not in entry or "exp_avg_sq" not in entry:
        raise ValueError(f"optimizer state holds {sorted(entry)}, not AdamW's exp_avg/exp_avg_sq")
    return entry


def _zero12_moments(optim: list[dict], param_shapes: list[dict]) -> tuple[dict, list[dict]]:
    """({name: moments}, [group hyperparameters]) from ZeRO 1/2 optimizer files in rank order.

    Rank r holds elements [r * P, (r + 1) * P) of each group's flat buffer (the last rank's
    tail is padding); inside the buffer, parameters follow `param_shapes` with the saved
    per-parameter alignment paddings.
    """
    osds = [f["optimizer_state_dict"] for f in optim]
    if not all(isinstance(o["base_optimizer_state"], Mapping) for o in osds):
        raise ValueError("ZeRO 1/2 elastic_checkpoint optimizer states are not supported")
    state, groups = {}, []
    for g, shapes in enumerate(param_shapes):
        groups.append(dict(osds[0]["base_optimizer_state"]["param_groups"][g]))
        entries = [_moments(o["base_optimizer_state"]["state"], g) for o in osds]
        if entries[0] is None:
            continue
        offset = 0
        for (name, shape), pad in zip(shapes.items(), osds[0]["param_alignment_paddings"][g]):
            numel = math.prod(shape)
            state[name] = {
                k: _slice([e[k] for e in entries], offset, numel).view(shape).float().clone()
                for k in ("exp_avg", "exp_avg_sq")
            }
            state[name]["step"] = entries[0]["step"].float().clone()
            offset += numel + pad
    return state, groups


def _zero3_moments(optim: list[dict], param_shapes: list[dict]) -> tuple[dict, list[dict]]:
    """As `_zero12_moments` for ZeRO-3: each parameter is cut into W pieces of ceil(numel / W)
    (the last one padded), piece r on rank r; a rank's pieces follow `param_shapes` order
    through its optimizer sub-groups, a parameter never spanning two sub-groups."""
    inner = [f["optimizer_state_dict"]["optimizer_state_dict"] for f in optim]
    sizes = [t.numel() for t in optim[0]["optimizer_state_dict"]["fp32_flat_groups"]]
    entries = [[_moments(o["state"], i) for i in range(len(sizes))] for o in inner]
    state, groups, sub, local = {}, [], 0, 0
    for shapes in param_shapes:
        for i, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            piece = math.ceil(numel / len(inner))
            if local >= sizes[sub]:
                sub, local = sub + 1, 0
            if local + piece > sizes[sub]:
                raise ValueError(f"{name}: ZeRO-3 partition layout does not match its shapes")
            if i == 0:
                groups.append(dict(inner[0]["param_groups"][sub]))
            if entries[0][sub] is not None:
                state[name] = {
                    k: torch.cat([e[sub][k][local : local + piece] for e in entries])[:numel]
                    .view(shape)
                    .float()
                    .clone()
                    for k in ("exp_avg", "exp_avg_sq")
                }
                state[name]["step"] = entries[0][sub]["step"].float().clone()
            local += piece
    return state, groups


def _zero0(model_file: dict, names: list[list[str]]) -> tuple[dict, dict, list[dict]]:
    """(weights, moments, group hyperparameters) of a ZeRO-0 engine, whose one model file holds
    the module (fp32 runs: the weights) and the optimizer (bf16 runs: DeepSpeed's wrapper with
    per-parameter fp32 masters `fp32_groups` around the torch AdamW state)."""
    opt, module = model_file["optimizer"], model_file["module"]
    if all(v.dtype == torch.float32 for v in module.values()):
        weights = {k: v.float().clone() for k, v in module.items()}
        inner = opt
    elif isinstance(opt, Mapping) and "fp32_groups" in opt:
        weights = {
            name: master.float().clone()
            for group_names, masters in zip(names, opt["fp32_groups"])
            for name, master in zip(group_names, masters)
        }
        inner = opt["optimizer_state_dict"]
    else:
        raise ValueError(
            "ZeRO-0 low-precision checkpoint without per-parameter fp32 masters (fp32_groups)"
        )
    state, groups = {}, []
    for group, group_names in zip(inner["param_groups"], names):
        if len(group["params"]) != len(group_names):
            raise ValueError(
                f"ZeRO-0 optimizer group holds {len(group['params'])} tensors, the model's "
                f"reference group {len(group_names)} parameters"
            )
        groups.append(dict(group))
        for index, name in zip(group["params"], group_names):
            entry = _moments(inner["state"], index)
            if entry is not None:
                state[name] = {k: entry[k].float().clone() for k in ("exp_avg", "exp_avg_sq")}
                state[name]["step"] = entry["step"].float().clone()
    return weights, state, groups


def _zero_weights(step_dir: Path, progress: Progress | None) -> dict[str, torch.Tensor]:
    """fp32 student weights (trainable only) of a ZeRO 1-3 checkpoint, one tensor at a time."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    lazy = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=ENGINE_TAG, lazy_mode=True)
    frozen = {f"{part}.{key}" for part, key in POS_TABLES.items()}
    every = max(1, len(lazy) // 10)
    weights = {}
    for i, (name, tensor) in enumerate(lazy.items(), start=1):
        if name not in frozen:  # dropped (ZeRO 1/2) or bf16 (ZeRO 3): regenerated instead
            weights[name] = tensor.contiguous().to(torch.float32, copy=True)
        if progress and (i % every == 0 or i == len(lazy)):
            progress(f"student weights: {i}/{len(lazy)} tensors")
    return weights


def _reference_names(encoder, predictor) -> list[list[str]]:
    """Trainable parameter names ("encoder.<key>") of the 4 reference AdamW groups, in order."""
    names = {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}
    names.update({id(p): f"predictor.{n}" for n, p in predictor.named_parameters()})
    return [[names[id(p)] for p in g["params"]] for g in build_param_groups(encoder, predictor)]


def _read_engine(step_dir: Path, names: list[list[str]], moments: bool, progress: Progress | None):
    """(weights, moments, group hyperparameters, param names per group, ZeRO stage)."""
    engine_dir = step_dir / ENGINE_TAG
    model_files = _rank_files(engine_dir, "*_model_states.pt")
    if not model_files:
        raise ValueError(f"{engine_dir}: no DeepSpeed *_model_states.pt files")
    # Every file DeepSpeed's own reader unpickles is checked here first (weights_only).
    model0 = _load_ds_file(model_files[0], progress)
    for path in model_files[1:]:
        _load_ds_file(path, progress)
    optim = [_load_ds_file(p, progress) for p in _rank_files(engine_dir, "*_optim_states.pt")]
    try:
        if not optim:
            return (*_zero0(model0, names), names, 0)
        stage = int(optim[0]["optimizer_state_dict"]["zero_stage"])
        shapes = model0["param_shapes"]
        state, groups = {}, []
        if moments:
            state, groups = (_zero3_moments if stage == 3 else _zero12_moments)(optim, shapes)
        del optim
        weights = _zero_weights(step_dir, progress)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(
            f"{engine_dir}: unexpected DeepSpeed checkpoint layout ({type(err).__name__}: {err})"
        ) from err
    return weights, state, groups, [list(s) for s in shapes], stage


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
    config_path = step_dir.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{config_path} not found: the run's config gives the architecture")
    cfg = load_config(str(config_path))
    enc_kw, pred_kw = encoder_kwargs_from_config(cfg), predictor_kwargs_from_config(cfg)
    encoder, predictor = empty_models(enc_kw, pred_kw)
    names = _reference_names(encoder, predictor)
    weights, state, hyper, saved, stage = _read_engine(step_dir, names, with_optimizer, progress)
    stray = sorted(k for k in weights if not k.startswith(("encoder.", "predictor.")))
    if stray:
        raise ValueError(f"{step_dir}: weights outside the encoder and predictor: {stray[:5]}")
    train_state = safe_torch_load(step_dir / STATE_FILE, "train state")
    target = safe_torch_load(step_dir / TARGET_FILE, "target encoder file")
    if not isinstance(target, Mapping) or not isinstance(target.get("state_dict"), Mapping):
        raise ValueError(f"{step_dir / TARGET_FILE}: expected a dict with a 'state_dict'")
    where = str(step_dir)
    target_sd = {k.removeprefix("module."): v.float() for k, v in target["state_dict"].items()}
    return make_consolidated(
        _fill_tables(encoder, "encoder", _split(weights, "encoder"), where),
        _fill_tables(predictor, "predictor", _split(weights, "predictor"), where),
        _fill_tables(encoder, "encoder", target_sd, str(step_dir / TARGET_FILE)),
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
