"""Build the DeepSpeed config: engine knobs from ``ds_configs/*.json``, the rest from ours.

The JSON holds engine knobs only (ZeRO stage, buckets, offload). Batch sizes, gradient
accumulation, precision and clipping come from our config; a JSON that sets one of them to
another value is an error naming both values, so two sources never silently disagree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ijepa_ds.config import gradient_accumulation_steps


def _ds_config_dir() -> Path:
    """Where the named configs live: ``ds_configs/`` at the root of a checkout (the one source
    of truth, also in an editable install), else the copy a wheel ships as
    ``ijepa_ds/ds_configs/`` (``setup.py`` maps the root folder there)."""
    package = Path(__file__).resolve().parent.parent
    checkout = package.parent / "ds_configs"
    return checkout if checkout.is_dir() else package / "ds_configs"


DS_CONFIG_DIR = _ds_config_dir()


def resolve_ds_config_path(name_or_path: str) -> Path:
    """``"zero1"`` -> ``DS_CONFIG_DIR/zero1.json``; an existing path is taken as is."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return path
    candidate = DS_CONFIG_DIR / f"{name_or_path}.json"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))
    raise ValueError(
        f"deepspeed.config={name_or_path!r}: no such JSON file and not one of {known} "
        f"in {DS_CONFIG_DIR}"
    )


def load_ds_json(name_or_path: str) -> dict[str, Any]:
    path = resolve_ds_config_path(name_or_path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"deepspeed.config file {path} is not valid JSON: {err}") from None


def _fill(ds: dict, dotted: str, value: Any, ours: str) -> None:
    """Set ``ds[dotted] = value`` unless the JSON already holds a different value."""
    *parents, leaf = dotted.split(".")
    node = ds
    for key in parents:
        node = node.setdefault(key, {})
    if leaf in node and node[leaf] != value and node[leaf] != "auto":
        raise ValueError(
            f"DeepSpeed JSON sets {dotted}={node[leaf]!r} but {ours} gives {value!r}: remove it "
            "from the JSON (batch sizes, precision and clipping come from the ijepa-ds config)"
        )
    node[leaf] = value


def build_ds_config(cfg, world_size: int) -> dict[str, Any]:
    """Resolved DeepSpeed config for ``cfg`` (an ``ijepa_ds.config.Config``) on ``world_size``
    ranks."""
    ds = copy.deepcopy(load_ds_json(cfg.deepspeed.config))
    micro = cfg.data.batch_size
    accum = gradient_accumulation_steps(cfg.data, world_size)
    _fill(ds, "train_micro_batch_size_per_gpu", micro, "data.batch_size")
    _fill(ds, "gradient_accumulation_steps", accum, "data.global_batch_size")
    _fill(ds, "train_batch_size", micro * accum * world_size, "data.global_batch_size")
    _fill(ds, "gradient_clipping", float(cfg.optim.gradient_clipping), "optim.gradient_clipping")
    _fill(ds, "bf16.enabled", cfg.optim.precision == "bf16", "optim.precision")
    _fill(ds, "fp16.enabled", False, "optim.precision")
    zero = ds.setdefault("zero_optimization", {})
    if cfg.deepspeed.zero_stage >= 0:
        _fill(ds, "zero_optimization.stage", cfg.deepspeed.zero_stage, "deepspeed.zero_stage")
    zero.setdefault("stage", 0)
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        # The engine is always given a torch AdamW (no DeepSpeed op to build); with offload it
        # steps the fp32 partitions where they live, in host memory. DeepSpeed refuses a client
        # optimizer under offload unless told that this is meant.
        ds["zero_force_ds_cpu_optimizer"] = False
    if cfg.deepspeed.offload_param:
        if zero["stage"] != 3:
            raise ValueError(
                f"deepspeed.offload_param=true needs ZeRO stage 3, the config gives {zero['stage']}"
            )
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if cfg.model.act_ckpt_impl == "deepspeed":
        ds["activation_checkpointing"] = {
            "partition_activations": False,
            "cpu_checkpointing": bool(cfg.model.act_ckpt_cpu_offload),
            "contiguous_memory_optimization": False,
            "synchronize_checkpoint_boundary": False,
        }
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
