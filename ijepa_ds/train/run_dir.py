"""The run folder: its name, and the resolved configs and code revision written into it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch.distributed as dist

from ijepa_ds.config import dump_yaml


def agree_on_run_dir(cfg, rank: int) -> Path:
    """``logging.output_dir / logging.run_name``; an empty name becomes ``<preset>-<time>``
    chosen on rank 0 and broadcast, so every rank writes into the same folder."""
    name = cfg.logging.run_name
    if not name:
        choice = [f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}" if rank == 0 else None]
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        name = choice[0]
    return Path(cfg.logging.output_dir) / name


def git_revision() -> str:
    """``IJEPA_DS_GIT_REVISION`` if set (jobs running from a code snapshot), else ``git
    describe`` of the package's checkout, else ``unknown``."""
    if os.environ.get("IJEPA_DS_GIT_REVISION"):
        return os.environ["IJEPA_DS_GIT_REVISION"]
    repo = Path(__file__).resolve().parent.parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def write_run_files(run_dir: Path, cfg, ds_config: dict) -> None:
    """Resolved config (YAML), resolved DeepSpeed config (JSON) and the git revision."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2, sort_keys=True) + "\n")
    (run_dir / "git_revision.txt").write_text(git_revision() + "\n")
