"""The consolidated checkpoint: one fp32 file with everything but the training run itself.

A dict (the `.pt` payload, loadable with `torch.load(weights_only=True)`)::

    format            "ijepa_ds.consolidated"
    version           1
    encoder, predictor, target_encoder   state dicts, reference key names, no prefix
    encoder_kwargs, predictor_kwargs     VisionTransformer / VisionTransformerPredictor kwargs
    config            nested dict of the run's resolved config, or None
    step, epoch       optimizer steps done, epochs completed
    optimizer         None, or {"param_groups": [4 reference groups: hyperparameters and
                      "params" = parameter NAMES "encoder.<key>" / "predictor.<key>"],
                      "state": {name: {"exp_avg", "exp_avg_sq", "step"}}} (AdamW, fp32)
    metadata          dict of plain values carried along (reference loss, batch_size, ...)

`.safetensors` holds the same: tensors keyed `encoder/<key>`, `predictor/<key>`,
`target_encoder/<key>`, `optimizer/<name>/<exp_avg|exp_avg_sq|step>`; every other field is a
JSON string in the file's metadata.
"""

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ijepa_ds import fileio
from ijepa_ds.fileio import atomic_save
from ijepa_ds.models import VisionTransformer, VisionTransformerPredictor

FORMAT = "ijepa_ds.consolidated"
VERSION = 1
MODEL_PARTS = ("encoder", "predictor", "target_encoder")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "step")
JSON_FIELDS = ("encoder_kwargs", "predictor_kwargs", "config", "step", "epoch", "metadata")
SUFFIXES = (".pt", ".safetensors")


class ConsolidatedError(ValueError):
    """A file that is not a readable consolidated checkpoint; the message names the file."""


def safe_torch_load(path: str | Path, what: str, mmap: bool = False) -> Any:
    """``fileio.safe_torch_load`` raising ``ConsolidatedError``."""
    return fileio.safe_torch_load(path, what, mmap=mmap, error=ConsolidatedError)


def _check_suffix(path: Path) -> str:
    if path.suffix not in SUFFIXES:
        raise ConsolidatedError(
            f"{path}: a consolidated checkpoint ends in {' or '.join(SUFFIXES)}, not "
            f"{path.suffix or '(no suffix)'!r}"
        )
    return path.suffix


def standalone_copier() -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that returns each tensor it is given, or a copy where safetensors needs one.

    safetensors refuses tensors that share storage (slices of one flat DeepSpeed partition, or
    one tensor under two names) and non-contiguous ones: those are copied, and only those, so
    a memory-mapped source stays mapped and a write holds about one output's worth of memory.
    """
    seen: set[int] = set()

    def standalone(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        storage = tensor.untyped_storage()
        whole = storage.nbytes() == tensor.numel() * tensor.element_size()
        if whole and tensor.is_contiguous() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            return tensor
        return tensor.contiguous().clone()

    return standalone


def _to_safetensors(obj: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    standalone = standalone_copier()
    tensors = {f"{part}/{k}": standalone(v) for part in MODEL_PARTS for k, v in obj[part].items()}
    meta = {"format": FORMAT, "version": str(VERSION)}
    meta.update({name: json.dumps(obj.get(name)) for name in JSON_FIELDS})
    optimizer = obj.get("optimizer")
    meta["optimizer_param_groups"] = json.dumps(
        None if optimizer is None else optimizer["param_groups"]
    )
    for name, moments in (optimizer or {}).get("state", {}).items():
        for key, value in moments.items():
            tensors[f"optimizer/{name}/{key}"] = standalone(value)
    return tensors, meta


def save_consolidated(obj: Mapping[str, Any], path: str | Path) -> Path:
    """Validate `obj` and write it atomically; the suffix (.pt / .safetensors) picks the format."""
    path = Path(path)
    suffix = _check_suffix(path)
    validate_consolidated(obj, "object to save")
    if suffix == ".pt":
        return atomic_save(path, lambda tmp: torch.save(dict(obj), tmp))
    from safetensors.torch import save_file

    tensors, meta = _to_safetensors(obj)
    return atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _from_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ConsolidatedError(
                    f"{path}: not a consolidated checkpoint (safetensors metadata format="
                    f"{meta.get('format')!r}, expected {FORMAT!r})"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        obj: dict[str, Any] = {"format": FORMAT, "version": int(meta["version"])}
        obj.update({name: json.loads(meta[name]) for name in JSON_FIELDS})
        groups = json.loads(meta["optimizer_param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        if isinstance(err, ConsolidatedError):
            raise
        raise ConsolidatedError(
            f"{path}: unreadable consolidated safetensors file, truncated or corrupt "
            f"({type(err).__name__}: {err})"
        ) from err
    for part in MODEL_PARTS:
        obj[part] = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(part + "/")}
    obj["optimizer"] = None
    if groups is not None:
        state: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                name, moment = key.removeprefix("optimizer/").rsplit("/", 1)
                state.setdefault(name, {})[moment] = value
        obj["optimizer"] = {"param_groups": groups, "state": state}
    return _restore_tuples(obj)


def _restore_tuples(obj: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; give back the tuples the .pt format keeps."""
    for name in ("encoder_kwargs", "predictor_kwargs"):
        obj[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in obj[name].items()}
    if obj.get("optimizer") is not None:
        obj["optimizer"]["param_groups"] = [
            {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
            for g in obj["optimizer"]["param_groups"]
        ]
    return obj


def load_consolidated(path: str | Path) -> dict[str, Any]:
    """Read a consolidated checkpoint (.pt or .safetensors) on CPU, validated.

    Raises:
        FileNotFoundError: no file at path.
        ConsolidatedError (ValueError): wrong suffix, truncated/corrupt, refused unsafe pickle,
            or not a consolidated checkpoint; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"consolidated checkpoint not found: {path}")
    if _check_suffix(path) == ".safetensors":
        obj = _from_safetensors(path)
    else:
        obj = safe_torch_load(path, "consolidated checkpoint", mmap=True)
    return validate_consolidated(obj, str(path))


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _validate_optimizer(optimizer: Any, where: str) -> None:
    if not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("param_groups"), list):
        raise ConsolidatedError(f"{where}: 'optimizer' must be None or hold a 'param_groups' list")
    names = {n for g in optimizer["param_groups"] for n in g.get("params", [])}
    state = optimizer.get("state")
    if not isinstance(state, Mapping):
        raise ConsolidatedError(f"{where}: 'optimizer' has no 'state' mapping")
    for name, moments in state.items():
        if name not in names:
            raise ConsolidatedError(f"{where}: optimizer state for {name!r}, which no group holds")
        if not _is_state_dict(moments) or set(moments) != set(MOMENT_KEYS):
            raise ConsolidatedError(f"{where}: optimizer state of {name!r} must hold {MOMENT_KEYS}")


def validate_consolidated(obj: Any, where: str = "consolidated checkpoint") -> dict[str, Any]:
    """Return `obj` if it has the consolidated layout, else raise ConsolidatedError naming
    `where` (the file) and the first problem found."""
    if not isinstance(obj, Mapping):
        raise ConsolidatedError(f"{where}: top level is {type(obj).__name__}, expected a dict")
    if obj.get("format") != FORMAT:
        raise ConsolidatedError(
            f"{where}: not a consolidated checkpoint (format={obj.get('format')!r}, expected "
            f"{FORMAT!r}; keys: {sorted(obj)[:10]})"
        )
    if obj.get("version") != VERSION:
        raise ConsolidatedError(f"{where}: version {obj.get('version')!r}; this reader knows 1")
    for part in MODEL_PARTS:
        if not _is_state_dict(obj.get(part)):
            raise ConsolidatedError(f"{where}: {part!r} is missing or not a state dict of tensors")
    for name in ("encoder_kwargs", "predictor_kwargs"):
        if not isinstance(obj.get(name), Mapping):
            raise ConsolidatedError(f"{where}: {name!r} is missing or not a dict")
    for name in ("step", "epoch"):
        if not isinstance(obj.get(name), int):
            raise ConsolidatedError(f"{where}: {name!r} is missing or not an integer")
    if obj.get("optimizer") is not None:
        _validate_optimizer(obj["optimizer"], where)
    return dict(obj)


def make_consolidated(
    encoder: Mapping[str, torch.Tensor],
    predictor: Mapping[str, torch.Tensor],
    target_encoder: Mapping[str, torch.Tensor],
    encoder_kwargs: Mapping[str, Any],
    predictor_kwargs: Mapping[str, Any],
    *,
    config: Mapping[str, Any] | None = None,
    step: int = 0,
    epoch: int = 0,
    optimizer: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble (and validate) a consolidated checkpoint dict."""
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": dict(encoder),
        "predictor": dict(predictor),
        "target_encoder": dict(target_encoder),
        "encoder_kwargs": dict(encoder_kwargs),
        "predictor_kwargs": dict(predictor_kwargs),
        "config": None if config is None else dict(config),
        "step": int(step),
        "epoch": int(epoch),
        "optimizer": None if optimizer is None else dict(optimizer),
        "metadata": dict(metadata or {}),
    }
    return validate_consolidated(obj, "new consolidated checkpoint")


def empty_models(
    encoder_kwargs: Mapping[str, Any], predictor_kwargs: Mapping[str, Any]
) -> tuple[VisionTransformer, VisionTransformerPredictor]:
    """Encoder and predictor on the meta device: names, shapes and requires_grad, no memory."""
    with torch.device("meta"):
        return VisionTransformer(**encoder_kwargs), VisionTransformerPredictor(**predictor_kwargs)


def build_models(
    consolidated: Mapping[str, Any],
) -> tuple[VisionTransformer, VisionTransformerPredictor, VisionTransformer]:
    """(encoder, predictor, target_encoder) on CPU in eval mode, weights loaded strictly.

    The modules take the checkpoint's tensors as their parameters (no copy, no random init).
    """
    enc_kw, pred_kw = consolidated["encoder_kwargs"], consolidated["predictor_kwargs"]
    encoder, predictor = empty_models(enc_kw, pred_kw)
    target, _ = empty_models(enc_kw, pred_kw)
    for module, part in (
        (encoder, "encoder"),
        (predictor, "predictor"),
        (target, "target_encoder"),
    ):
        module.load_state_dict(consolidated[part], strict=True, assign=True)
        module.eval()
    return encoder, predictor, target
