"""``TrainState``: what besides the weights a resume needs (state, not replay)."""

from __future__ import annotations

import platform
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


def capture_rng() -> dict:
    """This process's RNG states (torch CPU/CUDA, numpy, python) as weights_only-safe values."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_plain_to_numpy_state(state["numpy"]))
    random.setstate(_plain_to_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _numpy_state_to_plain(state) -> dict:
    kind, keys, pos, has_gauss, gauss = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _plain_to_numpy_state(plain: dict):
    keys = plain["keys"].numpy().astype(np.uint32)
    return (plain["kind"], keys, plain["pos"], plain["has_gauss"], plain["gauss"])


def _python_state_to_plain(state) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _plain_to_python_state(plain: dict):
    return (plain["version"], tuple(plain["internal"]), plain["gauss"])


def versions() -> dict:
    import ijepa_ds
    from ijepa_ds.backend.zero_files import deepspeed_version

    return {
        "ijepa_ds": ijepa_ds.__version__,
        "torch": str(torch.__version__),
        "deepspeed": deepspeed_version(),
        "python": platform.python_version(),
    }


@dataclass
class TrainState:
    """Progress of a run after ``step`` optimizer steps.

    ``cursor`` is the next global sample position (``step * global_batch_size``): data order,
    crops and masks are pure functions of positions, so it is all the data pipeline needs.
    ``rng`` holds one entry per rank (only used when resuming on the same world size; the
    model's own randomness — drop path — is then bit-exact).
    """

    step: int
    epoch: int
    cursor: int
    global_batch_size: int
    world_size: int
    zero_stage: int
    precision: str
    config_hash: str
    rng: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    # {"encoder": {...}, "predictor": {...}} constructor numbers (interop.arch); {} in
    # checkpoints written before it was recorded.
    model: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> TrainState:
        if not isinstance(state, dict):
            raise ValueError(f"train state is a {type(state).__name__}, not a dict")
        fields = cls.__dataclass_fields__
        known = {k: state[k] for k in fields if k in state}
        missing = set(fields) - set(known) - {"model"}
        if missing:
            raise ValueError(f"train state lacks {sorted(missing)}")
        return cls(**known)
