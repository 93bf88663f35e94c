"""A non-editable install (``pip install .``) ships the named DeepSpeed configs and finds them.

The wheel is built from a copy of the files ``setup.py`` reads, so the build's ``build/`` and
``*.egg-info`` land in a temporary folder, not in the checkout that other test runs share.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_ok

BUILD_INPUTS = ("setup.py", "pyproject.toml", "README.md", "ijepa_ds", "ds_configs")
CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))

# Run from the unpacked wheel with the checkout off sys.path (an editable install's .pth or a
# PYTHONPATH could put it there): resolve a name, then build the engine config from a preset.
RESOLVE = """
import json, sys
from pathlib import Path
site, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path[:] = [str(site)] + [p for p in sys.path if p and Path(p).resolve() != repo]
from ijepa_ds.config import load_config
from ijepa_ds.backend import ds_config
cfg = load_config("fmnist_tiny", ["deepspeed.config=zero1"])
print(json.dumps({
    "module": ds_config.__file__,
    "zero1": str(ds_config.resolve_ds_config_path("zero1")),
    "stage": ds_config.zero_stage(ds_config.build_ds_config(cfg, world_size=1)),
    "repo_on_path": any(p and Path(p).resolve() == repo for p in sys.path),
}))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src, out = root / "src", root / "dist"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*cmd, "-w", str(out)], env=_env(), capture_output=True, text=True, timeout=180
    )
    assert_ok(proc)
    (path,) = out.glob("ijepa_ds-*.whl")
    return path


def test_wheel_holds_every_named_config_unchanged(wheel):
    assert CONFIGS, "no ds_configs/*.json in the checkout"
    with zipfile.ZipFile(wheel) as whl:
        shipped = sorted(n for n in whl.namelist() if n.startswith("ijepa_ds/ds_configs/"))
        assert shipped == [f"ijepa_ds/ds_configs/{p.name}" for p in CONFIGS]
        for path in CONFIGS:
            assert whl.read(f"ijepa_ds/ds_configs/{path.name}") == path.read_bytes(), path.name


def test_installed_package_resolves_config_names(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", RESOLVE, str(site), str(REPO)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_ok(proc)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["repo_on_path"]
    assert Path(got["module"]).resolve().is_relative_to(site.resolve())
    assert Path(got["zero1"]) == (site / "ijepa_ds" / "ds_configs" / "zero1.json").resolve()
    expected = json.loads((REPO / "ds_configs" / "zero1.json").read_text())
    assert got["stage"] == expected["zero_optimization"]["stage"]
