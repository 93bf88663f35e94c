"""The W&B sink of MetricsWriter, offline and without network: real W&B run files, read back."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ijepa_ds.observability.metrics import JSONL_NAME, MetricsWriter
from ijepa_ds.observability.wandb_sink import RUN_ID_FILE, WandbError, WandbOptions, WandbSink
from tests.observability.wandb_files import offline_runs

wandb = pytest.importorskip("wandb")
CONFIG = {"model": {"name": "vit_tiny", "patch_size": 4}, "seed": 3}


@pytest.fixture(autouse=True)
def wandb_home(tmp_path_factory, monkeypatch):
    """No user W&B settings leak in, and W&B's own caches stay out of the home folder."""
    home = tmp_path_factory.mktemp("wandb_home")
    for name in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))


def _options(mode: str = "offline") -> WandbOptions:
    return WandbOptions("ijepa-ds-tests", mode=mode, tags=("tiny", "cpu"), config=CONFIG)


def _log_two_steps(run_dir: Path, first: int = 1, resume_step: int | None = None) -> None:
    with MetricsWriter(run_dir, 0, resume_step=resume_step, wandb=_options()) as writer:
        writer.log_scalars(first, {"loss": 0.5, "lr": torch.tensor(1e-3), "grad_norm/encoder": 2})
        writer.log_image(first, "masks/overlay", torch.full((3, 8, 12), 7, dtype=torch.uint8))
        writer.log_scalars(first + 1, {"loss": float("nan"), "lr": np.float32(2e-3)})


def test_offline_run_holds_scalars_image_and_config(tmp_path):
    _log_two_steps(tmp_path)
    (run,) = offline_runs(tmp_path)
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run.run_id
    assert run.project == "ijepa-ds-tests" and run.tags == ["tiny", "cpu"]
    assert run.config["model"] == CONFIG["model"] and run.config["seed"] == 3
    assert run.exit_code == 0
    rows = {row["_step"]: row for row in run.history}
    assert sorted(rows) == [1, 2]
    # The TensorBoard tags, unchanged; values are what the JSONL received.
    assert rows[1]["loss"] == 0.5 and rows[1]["grad_norm/encoder"] == 2.0
    assert rows[1]["lr"] == pytest.approx(1e-3) and rows[2]["lr"] == pytest.approx(2e-3)
    assert np.isnan(rows[2]["loss"])
    assert rows[1]["masks/overlay/_type"] == "image-file"
    assert (rows[1]["masks/overlay/width"], rows[1]["masks/overlay/height"]) == (12, 8)
    assert (run.folder / "files" / rows[1]["masks/overlay/path"]).is_file()
    jsonl = [json.loads(x) for x in (tmp_path / JSONL_NAME).read_text().splitlines()]
    scalar_keys = {k for record in jsonl for k in record} - {"step", "time"}
    assert scalar_keys == {"loss", "lr", "grad_norm/encoder"} and scalar_keys <= run.keys


def test_the_sink_gets_host_floats_only(tmp_path, monkeypatch):
    """The writer converts each value once, for every sink: W&B reads no device value itself."""
    seen: list[dict] = []
    original = WandbSink.log_scalars

    def spy(self, step, values):
        seen.append(dict(values))
        original(self, step, values)

    monkeypatch.setattr(WandbSink, "log_scalars", spy)
    _log_two_steps(tmp_path)
    assert [type(v) for row in seen for v in row.values()] == [float] * 5


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    _log_two_steps(tmp_path)
    first_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    time.sleep(1.0)  # W&B names offline folders by the second; a real resume is never this quick
    _log_two_steps(tmp_path, first=2, resume_step=2)
    old, new = offline_runs(tmp_path)
    assert old.run_id == new.run_id == first_id
    assert [row["_step"] for row in new.history] == [2, 3]
    time.sleep(1.0)
    _log_two_steps(tmp_path)  # a fresh start in the same folder is a new W&B run
    assert offline_runs(tmp_path)[-1].run_id != first_id
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == offline_runs(tmp_path)[-1].run_id


def test_other_ranks_start_no_run_and_create_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(wandb, "init", lambda **kw: pytest.fail("wandb.init on rank 1"))
    with MetricsWriter(tmp_path / "run", rank=1, wandb=_options()) as writer:
        assert not writer.enabled
        writer.log_scalars(1, {"loss": 1.0})
        writer.log_image(1, "masks/overlay", torch.zeros(1, 4, 4, dtype=torch.uint8))
    assert not (tmp_path / "run").exists()


def test_disabled_mode_writes_no_wandb_files(tmp_path):
    disabled = _options("disabled")
    with MetricsWriter(tmp_path, 0, tensorboard=False, jsonl=False, wandb=disabled) as writer:
        writer.log_scalars(1, {"loss": 1.0})
        writer.log_image(1, "masks/overlay", torch.zeros(1, 4, 4, dtype=torch.uint8))
    assert not (tmp_path / "wandb").exists() and not (tmp_path / RUN_ID_FILE).exists()


def test_a_run_that_fails_is_finished_as_failed(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with MetricsWriter(tmp_path, 0, tensorboard=False, wandb=_options()) as writer:
            writer.log_scalars(1, {"loss": 1.0})
            raise RuntimeError("boom")
    (run,) = offline_runs(tmp_path)
    assert run.exit_code == 1


def test_wandb_that_cannot_start_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(WandbError, match=r"W&B could not start in online mode: api_key .*"
                       r"logging.wandb_mode=offline needs no network"):  # fmt: skip
        MetricsWriter(tmp_path, 0, tensorboard=False, jsonl=True, wandb=_options("online"))
    assert not (tmp_path / RUN_ID_FILE).exists()


def test_a_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    with pytest.raises(WandbError, match=r"needs the wandb package: pip install 'ijepa-ds\["):
        WandbSink(tmp_path, _options())
