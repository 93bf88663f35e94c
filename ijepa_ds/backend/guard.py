"""The DeepSpeed this package was tested with, checked before any process group starts.

The backend relies on a few DeepSpeed internals (listed in ``PRIVATE``, each with what relies
on it). A DeepSpeed outside ``TESTED`` or without one of them fails here, with a message that
names the version, instead of in the middle of a step or a save. ``IJEPA_DS_ALLOW_UNTESTED_
DEEPSPEED=1`` turns an untested version into a warning; a missing internal is always an error.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from functools import cache

# [lowest, first untested): the range setup.py pins.
TESTED = ("0.19.8", "0.19.9")
ALLOW_VAR = "IJEPA_DS_ALLOW_UNTESTED_DEEPSPEED"

# (module, attribute path, what relies on it). Instance attributes are checked where used,
# with ``require_attribute``.
PRIVATE: tuple[tuple[str, str, str], ...] = (
    ("deepspeed.comm.torch", "build_shm_op", "comm.skip_shm_op_build replaces it on CPU"),
    ("deepspeed.utils.groups", "_WORLD_GROUP", "comm creates it with our collective timeout"),
    (
        "deepspeed.runtime.engine",
        "DeepSpeedEngine._copy_recovery_script",
        "engine.Engine.save routes its writes through the save's failure record",
    ),
    (
        "deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine",
        "TorchCheckpointEngine.makedirs",
        "engine.Engine.save routes its writes through the save's failure record",
    ),
    ("deepspeed.utils", "safe_get_local_fp32_param", "the ZeRO-3 EMA reads fp32 shards"),
    ("deepspeed.utils", "safe_get_full_fp32_param", "the ZeRO 1/2 EMA reads fp32 masters"),
    ("deepspeed.utils", "safe_get_full_grad", "Engine.grad_norms"),
    ("deepspeed.utils.zero_to_fp32", "natural_keys", "zero_files.rank_files"),
    (
        "deepspeed.utils.zero_to_fp32",
        "get_fp32_state_dict_from_zero_checkpoint",
        "zero_files.lazy_fp32_weights (lazy_mode)",
    ),
    ("deepspeed.checkpoint.ds_to_universal", "main", "elastic resume converts through it"),
    ("deepspeed.utils.tensor_fragment", "fragment_address", "zero_files.load_ds_file"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum", "zero_files.load_ds_file"),
)


class DeepSpeedVersionError(RuntimeError):
    """The installed DeepSpeed is not one this package can run on safely."""


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def missing_internals(required: Sequence[tuple[str, str, str]] = PRIVATE) -> list[str]:
    """``module.attr (what relies on it)`` for each entry of ``required`` that is absent."""
    missing = []
    for module_name, path, why in required:
        try:
            obj = importlib.import_module(module_name)
        except ImportError as err:
            missing.append(f"{module_name} (cannot import: {err}; {why})")
            continue
        for name in path.split("."):
            if not hasattr(obj, name):
                missing.append(f"{module_name}.{path} ({why})")
                break
            obj = getattr(obj, name)
    return missing


def check_deepspeed_version(
    version: str, required: Sequence[tuple[str, str, str]] = PRIVATE, env=None
) -> None:
    """Raise ``DeepSpeedVersionError`` naming ``version`` if it is outside ``TESTED`` (a
    warning with ``IJEPA_DS_ALLOW_UNTESTED_DEEPSPEED=1``) or lacks an internal we use."""
    env = os.environ if env is None else env
    lo, hi = TESTED
    tested = f"ijepa-ds is tested with deepspeed>={lo},<{hi}"
    missing = missing_internals(required)
    if missing:
        raise DeepSpeedVersionError(
            f"deepspeed {version} lacks internals ijepa-ds relies on: {'; '.join(missing)}. "
            f"{tested}: pip install 'deepspeed>={lo},<{hi}'"
        )
    if not _version_key(lo) <= _version_key(version) < _version_key(hi):
        message = f"deepspeed {version} is untested: {tested} (pip install 'deepspeed>={lo},<{hi}')"
        if env.get(ALLOW_VAR) != "1":
            raise DeepSpeedVersionError(f"{message}; set {ALLOW_VAR}=1 to run anyway")
        warnings.warn(message, stacklevel=2)


@cache
def check_deepspeed() -> str:
    """Check the installed DeepSpeed once per process; returns its version."""
    import deepspeed

    version = str(deepspeed.__version__)
    check_deepspeed_version(version)
    return version


def require_attribute(obj, name: str, owner: str):
    """``getattr(obj, name)``, or a ``DeepSpeedVersionError`` naming the DeepSpeed version
    and the ``owner`` class whose internal attribute is gone."""
    if not hasattr(obj, name):
        import deepspeed

        raise DeepSpeedVersionError(
            f"deepspeed {deepspeed.__version__}: {owner} has no attribute {name!r}, which "
            f"ijepa-ds relies on; it is tested with deepspeed>={TESTED[0]},<{TESTED[1]}"
        )
    return getattr(obj, name)
