"""DeepSpeed's checkpoint files: read them as plain data, convert them to the universal
format, and repair what DeepSpeed 0.19.8 breaks when it loads one.

A regular DeepSpeed checkpoint is sharded for the world size that wrote it; the universal
format (``deepspeed.checkpoint.ds_to_universal``) holds one file per parameter and loads on
any world size or ZeRO stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ijepa_ds.fileio import safe_torch_load


def deepspeed_version() -> str:
    import deepspeed

    return str(deepspeed.__version__)


def universal_client_state() -> dict:
    """What ds_to_universal needs at ZeRO-1/2 to convert a checkpoint for elastic resume."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    return {
        UNIVERSAL_CHECKPOINT_INFO: {
            UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE
        }
    }


def load_ds_file(path: Path, error: type[Exception], mmap: bool = True) -> Any:
    """One DeepSpeed checkpoint file as plain data: ``weights_only`` with DeepSpeed's own
    plain classes (loss scalers, the ZeRO stage enum, fragment addresses) allowed; a file that
    would run code raises ``error``. DeepSpeed's own readers unpickle without that check, so
    every file they open is read here first."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)
    return safe_torch_load(
        path, "DeepSpeed checkpoint file", mmap=mmap, error=error, allowed=allowed
    )


def rank_files(engine_dir: Path, pattern: str) -> list[Path]:
    """Files of ``pattern`` in rank order (DeepSpeed's own natural sort: rank 10 after 9)."""
    from deepspeed.utils.zero_to_fp32 import natural_keys

    return sorted(engine_dir.glob(pattern), key=lambda p: natural_keys(p.name))


def lazy_fp32_weights(step_dir: Path, tag: str) -> dict[str, Any]:
    """name -> lazily materialised fp32 tensor of a ZeRO 1-3 checkpoint's module weights
    (call ``.contiguous()`` on a value to build it; one parameter at a time)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=tag, lazy_mode=True)


def run_ds_to_universal(source: Path, dest: Path) -> subprocess.CompletedProcess:
    """``deepspeed.checkpoint.ds_to_universal`` of engine folder ``source`` into ``dest``, in a
    child process (one extract and one merge worker), with its output captured."""
    cmd = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(source), "--output_folder", str(dest),
        "--num_extract_workers", "1", "--num_merge_workers", "1",
    ]  # fmt: skip
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def fix_zero3_universal_groups(optimizer, group_hparams: list[dict]) -> None:
    """Undo DeepSpeed 0.19.8's ZeRO-3 multi-group universal-load damage.

    Its universal load gives every parameter group group 0's hyperparameters and one shared
    Adam ``step`` tensor, which AdamW then increments once per group. Re-apply each group's own
    hyperparameters and give each flat fp32 partition its own ``step``. ``optimizer`` is the
    engine's ZeRO-3 optimizer (its private ``optimizer`` and ``fp32_partitioned_groups_flat``).
    """
    from ijepa_ds.backend.guard import require_attribute

    base = require_attribute(optimizer, "optimizer", "DeepSpeedZeroOptimizer_Stage3")
    if len(base.param_groups) != len(group_hparams):
        raise RuntimeError(
            f"optimizer has {len(base.param_groups)} groups after loading, expected "
            f"{len(group_hparams)}"
        )
    for group, hparams in zip(base.param_groups, group_hparams):
        group.update(hparams)
    # The base groups' "params" lists are emptied by the load (ZeRO-3 re-points them at one
    # flat partition per optimizer step), so walk the flat fp32 partitions instead.
    flats = require_attribute(
        optimizer, "fp32_partitioned_groups_flat", "DeepSpeedZeroOptimizer_Stage3"
    )
    for flat in flats:
        state = base.state.get(flat, {})
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
