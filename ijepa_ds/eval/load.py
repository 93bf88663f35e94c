"""Load the target encoder f_theta_bar from any checkpoint kind ijepa-ds knows.

Accepted sources, recognised by their layout (folders) or suffix (files):

- a run folder: ``config.yaml`` + ``checkpoints/latest`` naming a complete step folder; the
  architecture comes from ``config.yaml``;
- a step folder ``.../checkpoints/step_XXXXXXXX/`` holding ``target_encoder.pt`` and the
  ``COMPLETE`` marker (or that ``target_encoder.pt`` itself); architecture from the run's
  ``config.yaml`` two levels up when present, else inferred from the weights;
- a consolidated ``.pt`` / ``.safetensors`` file (``ijepa_ds.interop.consolidated``), which
  records its own architecture;
- a reference ``.pth.tar`` (or ``.pth``/``.tar``) checkpoint of facebookresearch/ijepa: its
  ``target_encoder``, architecture inferred from the weights (``num_heads`` cannot be read
  from weights: pass it, or the inference's default for that width is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ijepa_ds.checkpoint.layout import TARGET_FILE, is_complete, read_latest
from ijepa_ds.config import Config, ConfigError, load_config
from ijepa_ds.models import VisionTransformer

ACCEPTED = (
    "a run folder (config.yaml + checkpoints/latest), a step folder (target_encoder.pt + "
    "COMPLETE), a consolidated .pt/.safetensors file, or a reference .pth.tar checkpoint"
)
REFERENCE_SUFFIXES = (".pth.tar", ".pth", ".tar")
CONSOLIDATED_SUFFIXES = (".pt", ".safetensors")


class SourceError(ValueError):
    """A source that is not a loadable checkpoint; the message names the path."""


@dataclass(frozen=True)
class Source:
    """What a SOURCE argument resolved to.

    kind: "run" | "step" | "consolidated" | "reference"; path: the file or step folder holding
    the weights; run_dir: the run folder when the checkpoint belongs to one.
    """

    kind: str
    path: Path
    run_dir: Path | None = None


def resolve_source(source: str | Path) -> Source:
    """Classify ``source``; raises FileNotFoundError / SourceError naming it and ACCEPTED."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint source {path} does not exist; expected {ACCEPTED}")
    if path.is_file() and path.name == TARGET_FILE:
        path = path.parent
    if path.is_dir():
        return _resolve_folder(path)
    name = path.name.lower()
    if name.endswith(REFERENCE_SUFFIXES):
        return Source("reference", path)
    if name.endswith(CONSOLIDATED_SUFFIXES):
        return Source("consolidated", path)
    raise SourceError(f"{path}: unrecognised checkpoint file suffix; expected {ACCEPTED}")


def _resolve_folder(path: Path) -> Source:
    if (path / TARGET_FILE).is_file():
        if not is_complete(path):
            raise SourceError(
                f"{path}: step folder without a COMPLETE marker (a save that did not finish)"
            )
        run_dir = path.parent.parent
        return Source("step", path, run_dir if (run_dir / "config.yaml").is_file() else None)
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        try:
            latest = read_latest(path)
        except ValueError as err:
            raise SourceError(f"{path}: {err}") from err
        if latest is None:
            raise SourceError(f"{path}: run folder has no checkpoints/latest (no checkpoint yet)")
        if not (is_complete(latest) and (latest / TARGET_FILE).is_file()):
            raise SourceError(
                f"{path}: checkpoints/latest names {latest.name}, which is missing, incomplete "
                f"or has no {TARGET_FILE}"
            )
        return Source("run", latest, path)
    raise SourceError(f"{path}: folder is not a run or step folder; expected {ACCEPTED}")


def run_config(source: Source) -> Config | None:
    """The run's resolved config when the checkpoint belongs to a run folder, else None."""
    if source.run_dir is None:
        return None
    path = source.run_dir / "config.yaml"
    try:
        return load_config(str(path))
    except ConfigError as err:
        raise SourceError(
            f"{path}: the run's config does not load with this ijepa-ds version ({err}); "
            "edit that key in the file to evaluate the run"
        ) from err


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        raise SourceError(f"{path}: cannot be read as a weights-only torch file ({err})") from err


def _step_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    payload = _torch_load(folder / TARGET_FILE)
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise SourceError(f"{folder / TARGET_FILE}: expected {{'state_dict': target encoder}}")
    return payload["state_dict"]


def _encoder_from_config(cfg: Config, num_heads: int | None, path: Path) -> VisionTransformer:
    from ijepa_ds.models.from_config import build_encoder_from_config

    encoder = build_encoder_from_config(cfg)
    if num_heads is not None and num_heads != encoder.num_heads:
        raise SourceError(
            f"{path}: num_heads={num_heads} contradicts the run's config "
            f"(model.num_heads -> {encoder.num_heads})"
        )
    return encoder


def _encoder_from_weights(
    state_dict: dict[str, torch.Tensor], num_heads: int | None
) -> VisionTransformer:
    from ijepa_ds.interop.arch import infer_encoder_kwargs

    return VisionTransformer(**infer_encoder_kwargs(state_dict, num_heads=num_heads))


def _load_weights(encoder: VisionTransformer, state_dict: dict, path: Path) -> VisionTransformer:
    try:
        encoder.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise SourceError(f"{path}: weights do not fit the encoder architecture: {err}") from err
    return encoder.float().eval().requires_grad_(False)


def load_target_encoder(
    source: str | Path, num_heads: int | None = None
) -> tuple[VisionTransformer, str]:
    """The frozen fp32 target encoder of ``source`` (eval mode) and a one-line description."""
    src = resolve_source(source)
    if src.kind in ("run", "step"):
        state_dict = _step_state_dict(src.path)
        cfg = run_config(src)
        if cfg is not None:
            encoder = _encoder_from_config(cfg, num_heads, src.path)
        else:
            encoder = _encoder_from_weights(state_dict, num_heads)
        where = f"run {src.run_dir}, " if src.kind == "run" else ""
        description = f"{where}step folder {src.path}"
    elif src.kind == "consolidated":
        from ijepa_ds.interop.consolidated import load_consolidated

        payload = load_consolidated(src.path)
        state_dict = payload["target_encoder"]
        kwargs = dict(payload["encoder_kwargs"])
        if num_heads is not None and num_heads != kwargs.get("num_heads"):
            raise SourceError(
                f"{src.path}: num_heads={num_heads} contradicts the file's encoder_kwargs "
                f"(num_heads={kwargs.get('num_heads')})"
            )
        encoder = VisionTransformer(**kwargs)
        description = f"consolidated checkpoint {src.path}"
    else:
        from ijepa_ds.interop.reference_ckpt import load_reference_checkpoint

        state_dict = load_reference_checkpoint(src.path).target_encoder
        encoder = _encoder_from_weights(state_dict, num_heads)
        description = f"reference checkpoint {src.path} (target_encoder)"
    encoder = _load_weights(encoder, state_dict, src.path)
    return encoder, f"{description}; {_arch_summary(encoder)}"


def _arch_summary(encoder: VisionTransformer) -> str:
    grid = "x".join(str(g) for g in encoder.grid_size)
    return (
        f"ViT D={encoder.embed_dim} depth={len(encoder.blocks)} heads={encoder.num_heads} "
        f"patch={encoder.patch_size} grid={grid}"
    )
