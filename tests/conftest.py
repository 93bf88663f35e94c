"""Shared pytest fixtures: the reference I-JEPA oracle and CPU-friendly defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _reference_dir() -> Path:
    env = os.environ.get("IJEPA_REFERENCE_FIXTURE_DIR")
    return Path(env) if env else REPO.parent / "shared" / "fixtures" / "official_ijepa"


@pytest.fixture(scope="session")
def reference_fixture_dir() -> Path:
    """Folder with ``official_tiny.pth.tar`` and ``expected.pt`` written by the reference code."""
    path = _reference_dir()
    if not (path / "expected.pt").is_file():
        pytest.skip(f"reference fixture not found at {path} (set IJEPA_REFERENCE_FIXTURE_DIR)")
    return path


@pytest.fixture(scope="session")
def reference_expected(reference_fixture_dir: Path) -> dict:
    # Trusted fixture written by the reference code; it holds Python lists/dicts of floats,
    # which weights_only loading refuses, hence weights_only=False for this file only.
    return torch.load(reference_fixture_dir / "expected.pt", weights_only=False)
