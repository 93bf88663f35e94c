"""Consolidated checkpoint <-> reference I-JEPA `.pth.tar` (docs/reference.md section 3).

The reference file holds `encoder`, `predictor`, `target_encoder` (DDP state dicts: every key
prefixed `module.`, the fixed `pos_embed` / `predictor_pos_embed` tables included), `opt` (a
torch AdamW state dict over the 4 reference groups, which INCLUDE the frozen tables: the
reference never removes them, they just never get a gradient, hence no state), `scaler`,
`epoch` (completed epochs), `loss`, `batch_size`, `world_size`, `lr`.

Parameter index i of `opt` is the i-th parameter of the concatenated groups, in the order the
reference builds them (`train.param_groups.build_param_groups(..., include_frozen=True)`).
The reference format has no place for our config or step count: the step comes back from
the AdamW step count, the config is lost.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ijepa_ds.backend.param_groups import build_param_groups
from ijepa_ds.fileio import atomic_save
from ijepa_ds.interop.arch import encoder_grid, infer_encoder_kwargs, infer_predictor_kwargs
from ijepa_ds.interop.consolidated import (
    MOMENT_KEYS,
    empty_models,
    make_consolidated,
    validate_consolidated,
)
from ijepa_ds.interop.reference_ckpt import ReferenceCheckpoint, load_reference_checkpoint

DDP_PREFIX = "module."
METADATA_DEFAULTS = {"loss": None, "batch_size": None, "world_size": 1, "lr": None}


def reference_param_names(
    encoder_kwargs: Mapping[str, Any], predictor_kwargs: Mapping[str, Any]
) -> tuple[list[list[str]], set[str], list[dict[str, Any]]]:
    """(names of the 4 reference AdamW groups, frozen included, in index order; frozen names;
    each group's own fields, e.g. WD_exclude and weight_decay 0 for the bias groups).

    Names are "encoder.<key>" / "predictor.<key>", as in the consolidated optimizer.
    """
    encoder, predictor = empty_models(encoder_kwargs, predictor_kwargs)
    names = {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}
    names.update({id(p): f"predictor.{n}" for n, p in predictor.named_parameters()})
    frozen = {
        names[id(p)]
        for module in (encoder, predictor)
        for p in module.parameters()
        if not p.requires_grad
    }
    groups = build_param_groups(encoder, predictor, include_frozen=True)
    fields = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    return [[names[id(p)] for p in g["params"]] for g in groups], frozen, fields


def _reference_opt(consolidated: Mapping[str, Any]) -> dict[str, Any]:
    """The AdamW state dict a torch.optim.AdamW over the reference groups would save."""
    groups, frozen, defaults = reference_param_names(
        consolidated["encoder_kwargs"], consolidated["predictor_kwargs"]
    )
    optimizer = consolidated["optimizer"]
    saved = optimizer["param_groups"] if optimizer else [{} for _ in groups]
    if len(saved) != len(groups):
        raise ValueError(f"optimizer has {len(saved)} param groups, the reference layout 4")
    # A real AdamW over meta parameters gives torch's exact group fields and defaults.
    meta = [torch.empty(0, device="meta", requires_grad=True) for g in groups for _ in g]
    chunks, start = [], 0
    for names, hyper, own in zip(groups, saved, defaults):
        trainable = [n for n in names if n not in frozen]
        if optimizer and list(hyper.get("params", [])) != trainable:
            raise ValueError(
                f"optimizer group holds {hyper.get('params', [])[:3]}..., the reference group "
                f"{trainable[:3]}... (a different model or order)"
            )
        fields = {k: v for k, v in hyper.items() if k != "params"}
        chunks.append({**own, **fields, "params": meta[start : start + len(names)]})
        start += len(names)
    state_dict = torch.optim.AdamW(chunks).state_dict()
    flat = [n for names in groups for n in names]
    moments = optimizer["state"] if optimizer else {}
    state_dict["state"] = {
        index: dict(moments[name]) for index, name in enumerate(flat) if name in moments
    }
    return state_dict


def to_reference(consolidated: Mapping[str, Any]) -> dict[str, Any]:
    """Reference `.pth.tar` payload from a consolidated checkpoint.

    Without optimizer state, `opt` still has the 4 groups (the reference's group fields,
    torch's AdamW defaults otherwise; empty state) so the reference loader's
    `opt.load_state_dict` works and its weight-decay schedule skips the bias groups.
    """
    validate_consolidated(consolidated, "consolidated checkpoint")
    meta = {**METADATA_DEFAULTS, **(consolidated.get("metadata") or {})}
    payload = {
        part: {DDP_PREFIX + k: v for k, v in consolidated[part].items()}
        for part in ("encoder", "predictor", "target_encoder")
    }
    payload.update(
        opt=_reference_opt(consolidated),
        scaler=None,
        epoch=consolidated["epoch"],
        **{k: meta[k] for k in ("loss", "batch_size", "world_size", "lr")},
    )
    return payload


def save_reference(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write a reference payload with torch.save, atomically."""
    return atomic_save(path, lambda tmp: torch.save(dict(payload), tmp))


def _consolidated_optimizer(
    opt: Mapping[str, Any], groups: list[list[str]], frozen: set[str], where: str
) -> dict[str, Any]:
    saved = opt.get("param_groups", [])
    sizes = [len(g["params"]) for g in saved]
    if sizes != [len(g) for g in groups]:
        raise ValueError(
            f"{where}: 'opt' groups hold {sizes} parameters, the model's reference groups "
            f"{[len(g) for g in groups]} (a different model)"
        )
    state: dict[str, dict[str, torch.Tensor]] = {}
    param_groups = []
    for saved_group, names in zip(saved, groups):
        for index, name in zip(saved_group["params"], names):
            if index in opt.get("state", {}):
                entry = opt["state"][index]
                state[name] = {k: entry[k].float() for k in MOMENT_KEYS}
        fields = {k: v for k, v in saved_group.items() if k != "params"}
        param_groups.append({**fields, "params": [n for n in names if n not in frozen]})
    stray = [n for n in state if n in frozen]
    if stray:
        raise ValueError(f"{where}: optimizer state for frozen parameters {stray}")
    return {"param_groups": param_groups, "state": state}


def from_reference(
    source: str | Path | ReferenceCheckpoint,
    num_heads: int | None = None,
    pred_num_heads: int | None = None,
    img_size: int | tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Consolidated checkpoint from a reference `.pth.tar` (a path or a loaded checkpoint).

    Architecture kwargs are inferred from the weights (num_heads from the standard widths
    unless given; the predictor's heads default to the encoder's, as in the reference).
    The AdamW moments are carried; `step` is their step count (0 without optimizer state).
    """
    ckpt = source if isinstance(source, ReferenceCheckpoint) else load_reference_checkpoint(source)
    where = str(ckpt.path)
    enc_kw = infer_encoder_kwargs(ckpt.encoder, num_heads=num_heads, img_size=img_size)
    pred_kw = infer_predictor_kwargs(
        ckpt.predictor,
        num_heads=enc_kw["num_heads"] if pred_num_heads is None else pred_num_heads,
        grid_size=encoder_grid(enc_kw),
    )
    optimizer = None
    if ckpt.opt is not None:
        groups, frozen, _ = reference_param_names(enc_kw, pred_kw)
        optimizer = _consolidated_optimizer(ckpt.opt, groups, frozen, where)
    steps = [int(m["step"]) for m in (optimizer or {"state": {}})["state"].values()]
    meta = {k: v for k, v in ckpt.metadata.items() if k != "epoch"}
    return make_consolidated(
        {k: v.float() for k, v in ckpt.encoder.items()},
        {k: v.float() for k, v in ckpt.predictor.items()},
        {k: v.float() for k, v in ckpt.target_encoder.items()},
        enc_kw,
        pred_kw,
        config=None,
        step=max(steps, default=0),
        epoch=int(ckpt.metadata.get("epoch", 0)),
        optimizer=optimizer,
        metadata={**meta, "source": where},
    )
