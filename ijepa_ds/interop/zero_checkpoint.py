"""A DeepSpeed engine folder (ZeRO 0-3) -> fp32 student weights and AdamW moments by name.

The folder is the one `engine.save_checkpoint` writes under tag "engine" (`ENGINE_TAG`):
`*_model_states.pt` per rank, plus `*_optim_states.pt` per rank at ZeRO 1-3.

- Student weights, ZeRO 1-3: DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` in lazy
  mode, materialised one tensor at a time (ZeRO-3 gathers per parameter; at ZeRO 1/2
  DeepSpeed itself concatenates each group's partitions first). The frozen sin-cos tables
  (`POS_TABLES`) are skipped: dropped at ZeRO 1/2, bf16 at ZeRO 3. ZeRO 0: the module weights
  of fp32 runs, the fp32 masters of DeepSpeed's bf16 wrapper otherwise.
- AdamW moments, ZeRO 0-3: a rank's flat `exp_avg`/`exp_avg_sq` partition is laid out like its
  fp32 master partition, so one walk over the saved parameter shapes (ZeRO 1/2 alignment
  paddings, ZeRO-3 per-parameter padding) cuts them into parameters. Refused with a message:
  ZeRO 1/2 `elastic_checkpoint` states and optimizer states without `exp_avg`.
- Every DeepSpeed file is first read with `weights_only=True` (DeepSpeed's own plain data
  classes allowlisted): a file that would run code is refused before DeepSpeed's reader, which
  unpickles without that check, opens it.
"""

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ijepa_ds.backend import zero_files
from ijepa_ds.checkpoint.layout import ENGINE_TAG
from ijepa_ds.interop.consolidated import ConsolidatedError

Progress = Callable[[str], None]
# Frozen sin-cos position tables, by model part: never read, the converter regenerates them.
POS_TABLES = {"encoder": "pos_embed", "predictor": "predictor_pos_embed"}


def load_ds_file(path: Path, progress: Progress | None) -> Any:
    """One DeepSpeed checkpoint file as plain data (mmap); a file that would run code raises
    ``ConsolidatedError``."""
    if progress:
        progress(f"reading {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return zero_files.load_ds_file(path, ConsolidatedError)


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


def _zero3_group_of(optim: list[dict]) -> dict[int, int]:
    """ZeRO-3 sub-group index -> param group index. Each sub-group's flat partition is one
    optimizer parameter; a param group (one of the reference's 4) lists the sub-groups it was
    split into (`sub_group_size`), and `param_shapes` has one entry per sub-group."""
    groups = optim[0]["optimizer_state_dict"]["optimizer_state_dict"]["param_groups"]
    return {i: g for g, group in enumerate(groups) for i in group["params"]}


def _group_names(shapes: list[dict], group_of: dict[int, int] | None) -> list[list[str]]:
    """Parameter names per param group (ZeRO-3: its sub-groups' shapes joined)."""
    if group_of is None:
        return [list(s) for s in shapes]
    names: list[list[str]] = []
    for sub, sub_shapes in enumerate(shapes):
        if group_of[sub] == len(names):
            names.append([])
        names[group_of[sub]].extend(sub_shapes)
    return names


def _zero3_moments(optim: list[dict], param_shapes: list[dict]) -> tuple[dict, list[dict]]:
    """As `_zero12_moments` for ZeRO-3: each parameter is cut into W pieces of ceil(numel / W)
    (the last one padded), piece r on rank r; a rank's pieces follow `param_shapes` order
    through its optimizer sub-groups, a parameter never spanning two sub-groups."""
    inner = [f["optimizer_state_dict"]["optimizer_state_dict"] for f in optim]
    sizes = [t.numel() for t in optim[0]["optimizer_state_dict"]["fp32_flat_groups"]]
    entries = [[_moments(o["state"], i) for i in range(len(sizes))] for o in inner]
    group_of = _zero3_group_of(optim)
    state, groups, sub, local = {}, [], 0, 0
    for shapes in param_shapes:
        for i, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            piece = math.ceil(numel / len(inner))
            if local >= sizes[sub]:
                sub, local = sub + 1, 0
            if local + piece > sizes[sub]:
                raise ValueError(f"{name}: ZeRO-3 partition layout does not match its shapes")
            if i == 0 and len(groups) <= group_of[sub]:  # param_shapes is per sub-group
                groups.append(dict(inner[0]["param_groups"][group_of[sub]]))
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
    lazy = zero_files.lazy_fp32_weights(step_dir, ENGINE_TAG)
    frozen = {f"{part}.{key}" for part, key in POS_TABLES.items()}
    every = max(1, len(lazy) // 10)
    weights = {}
    for i, (name, tensor) in enumerate(lazy.items(), start=1):
        if name not in frozen:  # dropped (ZeRO 1/2) or bf16 (ZeRO 3): regenerated instead
            weights[name] = tensor.contiguous().to(torch.float32, copy=True)
        if progress and (i % every == 0 or i == len(lazy)):
            progress(f"student weights: {i}/{len(lazy)} tensors")
    return weights


def read_engine(
    step_dir: Path, names: list[list[str]], moments: bool, progress: Progress | None
) -> tuple[dict, dict, list[dict], list[list[str]], int]:
    """(weights, moments, group hyperparameters, param names per group, ZeRO stage) of the
    engine folder in `step_dir`.

    Args:
        names: trainable parameter names ("encoder.<key>") of the 4 reference AdamW groups;
            a ZeRO-0 file lists its parameters by index, in this order.
        moments: also cut the AdamW moments out of the ZeRO 1-3 optimizer files (else `{}`
            and `[]`); ZeRO 0 keeps them in its one model file and always returns them.
    """
    engine_dir = step_dir / ENGINE_TAG
    model_files = zero_files.rank_files(engine_dir, "*_model_states.pt")
    if not model_files:
        raise ValueError(f"{engine_dir}: no DeepSpeed *_model_states.pt files")
    # Every file DeepSpeed's own reader unpickles is checked here first (weights_only).
    model0 = load_ds_file(model_files[0], progress)
    for path in model_files[1:]:
        load_ds_file(path, progress)
    optim = [
        load_ds_file(p, progress) for p in zero_files.rank_files(engine_dir, "*_optim_states.pt")
    ]
    try:
        if not optim:
            return (*_zero0(model0, names), names, 0)
        stage = int(optim[0]["optimizer_state_dict"]["zero_stage"])
        shapes = model0["param_shapes"]
        state, groups = {}, []
        if moments:
            state, groups = (_zero3_moments if stage == 3 else _zero12_moments)(optim, shapes)
        names_per_group = _group_names(shapes, _zero3_group_of(optim) if stage == 3 else None)
        del optim
        weights = _zero_weights(step_dir, progress)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(
            f"{engine_dir}: unexpected DeepSpeed checkpoint layout ({type(err).__name__}: {err})"
        ) from err
    return weights, state, groups, names_per_group, stage
