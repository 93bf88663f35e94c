"""``ijepa-ds convert SRC DST``: between DeepSpeed runs, consolidated files, reference I-JEPA
checkpoints and timm.

Sources (kind inferred): a run folder (its newest complete checkpoint), a step folder, a
reference ``.pth.tar``, a consolidated ``.pt`` / ``.safetensors``. Outputs: ``consolidated``
(``.pt`` / ``.safetensors``), ``reference`` (``.pth.tar``) or ``timm`` (the target encoder,
``.safetensors`` / ``.pt``); the kind comes from DST's suffix unless ``--to`` names it.
Heavy imports stay inside the handler so ``ijepa-ds --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

TARGETS = ("consolidated", "reference", "timm")
TARGET_SUFFIXES = {
    "consolidated": (".pt", ".safetensors"),
    "reference": (".pth.tar", ".tar", ".pth", ".pt"),
    "timm": (".safetensors", ".pt"),
}
SOURCES_HELP = (
    "a run folder (with checkpoints/latest), a step folder (with engine/), a reference "
    ".pth.tar, or a consolidated .pt/.safetensors"
)


def source_kind(path: Path) -> str:
    """ "run", "step", "reference", "consolidated" or "pt" (a .pt file: read to tell)."""
    if path.is_dir():
        if (path / "engine").is_dir():
            return "step"
        if (path / "checkpoints").is_dir():
            return "run"
        raise ValueError(f"{path}: a folder, but not a checkpoint; expected {SOURCES_HELP}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (expected {SOURCES_HELP})")
    name = path.name
    if name.endswith(".safetensors"):
        return "consolidated"
    if name.endswith((".pth.tar", ".tar")):
        return "reference"
    if name.endswith((".pt", ".pth")):
        return "pt"
    raise ValueError(
        f"{path}: cannot tell what this file is from its name; expected {SOURCES_HELP}"
    )


def target_kind(dst: Path, to: str | None) -> str:
    """Output kind: `to`, or from DST's suffix (.pth.tar -> reference, .pt/.safetensors ->
    consolidated); checks that the suffix fits the kind."""
    name = dst.name
    if to is None:
        if name.endswith((".pth.tar", ".tar")):
            return "reference"
        if name.endswith((".pt", ".safetensors")):
            return "consolidated"
        raise ValueError(
            f"{dst}: cannot tell the output format from the suffix; use .pth.tar (reference), "
            f".pt/.safetensors (consolidated), or give --to {{{','.join(TARGETS)}}}"
        )
    if not name.endswith(TARGET_SUFFIXES[to]):
        raise ValueError(f"{dst}: a {to} output ends in {' or '.join(TARGET_SUFFIXES[to])}")
    return to


def _load_pt(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ijepa_ds.interop.consolidated import FORMAT, safe_torch_load, validate_consolidated
    from ijepa_ds.interop.reference_export import from_reference

    payload = safe_torch_load(path, "checkpoint", mmap=True)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return validate_consolidated(payload, str(path))
    if isinstance(payload, dict) and {"encoder", "predictor", "target_encoder"} <= set(payload):
        return from_reference(path, args.num_heads, args.pred_num_heads)
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise ValueError(f"{path}: neither a consolidated nor a reference checkpoint ({keys})")


def load_source(src: Path, args: argparse.Namespace, target: str) -> dict[str, Any]:
    """Any supported source as a consolidated dict; for a timm ``target`` from a run or step
    folder only the target encoder part of one (the student's shards are never read)."""
    kind = source_kind(src)
    if kind in ("run", "step") and target == "timm":
        from ijepa_ds.interop.from_deepspeed import deepspeed_target_encoder

        return deepspeed_target_encoder(src)
    if kind in ("run", "step"):
        from ijepa_ds.interop.from_deepspeed import consolidate_deepspeed

        return consolidate_deepspeed(src, with_optimizer=not args.no_optimizer)
    if kind == "reference":
        from ijepa_ds.interop.reference_export import from_reference

        return from_reference(src, args.num_heads, args.pred_num_heads)
    if kind == "consolidated":
        from ijepa_ds.interop.consolidated import load_consolidated

        return load_consolidated(src)
    return _load_pt(src, args)


def write_target(obj: dict[str, Any], dst: Path, kind: str) -> Path:
    if kind == "consolidated":
        from ijepa_ds.interop.consolidated import save_consolidated

        return save_consolidated(obj, dst)
    if kind == "reference":
        from ijepa_ds.interop.reference_export import save_reference, to_reference

        return save_reference(to_reference(obj), dst)
    from ijepa_ds.interop.timm_export import export_timm_encoder

    return export_timm_encoder(obj["target_encoder"], obj["encoder_kwargs"], obj["step"], dst)


def run_convert(args: argparse.Namespace) -> int:
    """Handler of ``ijepa-ds convert``; returns the exit code (2 on a bad input)."""
    src, dst = Path(args.src), Path(args.dst)
    try:
        kind = target_kind(dst, args.to)
        if dst.exists() and dst.resolve() == src.resolve():
            raise ValueError(f"{dst}: DST is the source itself")
        obj = load_source(src, args, kind)
        if args.no_optimizer and kind != "timm":
            obj["optimizer"] = None
        written = write_target(obj, dst, kind)
    except (ValueError, FileNotFoundError) as err:
        print(f"ijepa-ds convert: error: {err}", file=sys.stderr)
        return 2
    size = written.stat().st_size / 2**20
    print(f"wrote {written} ({kind}, step {obj['step']}, epoch {obj['epoch']}, {size:.1f} MiB)")
    return 0


def configure_convert(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ijepa-ds convert``."""
    parser.add_argument("src", metavar="SRC", help=SOURCES_HELP)
    parser.add_argument("dst", metavar="DST", help="output file")
    parser.add_argument(
        "--to",
        choices=TARGETS,
        default=None,
        help="output kind; default from DST's suffix (.pth.tar reference, .pt/.safetensors "
        "consolidated); timm writes the target encoder for timm's VisionTransformer",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="encoder heads of a reference source (default: from the standard ViT widths)",
    )
    parser.add_argument(
        "--pred-num-heads",
        type=int,
        default=None,
        help="predictor heads of a reference source (default: the encoder's, as upstream)",
    )
    parser.add_argument(
        "--no-optimizer",
        action="store_true",
        help="leave the AdamW moments out",
    )
    parser.set_defaults(func=run_convert)
