"""``python -m ijepa_ds.train`` is ``ijepa-ds train``: the same arguments, errors and codes."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO, cpu_env


def _module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ijepa_ds.train", *args], env=cpu_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_bad_config_exits_2_naming_the_key_without_a_traceback():
    proc = _module("--config", "fmnist_tiny", "data.batch_sze=3")
    assert proc.returncode == 2
    assert "data.batch_sze" in proc.stderr and "Did you mean data.batch_size" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_the_train_arguments():
    proc = _module("--help")
    assert proc.returncode == 0
    assert "--resume" in proc.stdout and "--config" in proc.stdout
