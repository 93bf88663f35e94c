"""The DeepSpeed config: engine knobs from JSON, batch/precision/clipping from ours."""

from __future__ import annotations

import json

import pytest

from ijepa_ds.backend.ds_config import DS_CONFIG_DIR, build_ds_config
from ijepa_ds.config import load_config


def _cfg(*overrides):
    return load_config("fmnist_tiny", list(overrides))


def test_values_filled_from_our_config():
    ds = build_ds_config(_cfg("data.global_batch_size=256", "optim.precision=bf16"), 2)
    assert ds["train_micro_batch_size_per_gpu"] == 64
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 256
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 0.0  # explicit: DeepSpeed's default would be 1.0
    assert ds["zero_optimization"]["stage"] == 1


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_shipped_stage_file(stage):
    ds = build_ds_config(_cfg(f"deepspeed.config=zero{stage}"), 2)
    assert ds["zero_optimization"]["stage"] == stage


def test_offload_file_and_flags():
    ds = build_ds_config(_cfg("deepspeed.config=zero3_offload"), 2)
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="offload_param=true needs ZeRO stage 3"):
        build_ds_config(_cfg("deepspeed.offload_param=true"), 2)


def test_conflicting_json_value_names_both(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 32, "gradient_clipping": 1.0}))
    with pytest.raises(
        ValueError, match=r"train_micro_batch_size_per_gpu=32 but data.batch_size gives 64"
    ):
        build_ds_config(_cfg(f"deepspeed.config={path}"), 2)


def test_stage_override_conflicting_with_file():
    with pytest.raises(
        ValueError, match=r"zero_optimization.stage=1 but deepspeed.zero_stage gives 3"
    ):
        build_ds_config(_cfg("deepspeed.zero_stage=3"), 2)


def test_unknown_file_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match="deepspeed.config='zero9'"):
        build_ds_config(_cfg("deepspeed.config=zero9"), 2)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_ds_config(_cfg(f"deepspeed.config={bad}"), 2)


def test_shipped_files_hold_engine_knobs_only():
    for path in DS_CONFIG_DIR.glob("*.json"):
        keys = set(json.loads(path.read_text()))
        assert not keys & {
            "train_batch_size",
            "train_micro_batch_size_per_gpu",
            "bf16",
            "fp16",
            "gradient_clipping",
            "gradient_accumulation_steps",
        }, path
