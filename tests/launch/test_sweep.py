"""``--sweep``: values split outside brackets, the grid, and the (config, overrides) per run."""

from __future__ import annotations

import pytest

from ijepa_ds.config import ConfigError
from ijepa_ds.launch.sweep import expand_sweep, split_values, sweep_runs


def test_sweep_values_split_outside_brackets():
    assert split_values("a,[0.3,1.0],b") == ["a", "[0.3,1.0]", "b"]
    grid = expand_sweep(["schedule.lr=1e-3,5e-4", "data.crop_scale=[0.3,1.0],[0.5,1.0]"])
    assert grid == [
        ["schedule.lr=1e-3", "data.crop_scale=[0.3,1.0]"],
        ["schedule.lr=1e-3", "data.crop_scale=[0.5,1.0]"],
        ["schedule.lr=5e-4", "data.crop_scale=[0.3,1.0]"],
        ["schedule.lr=5e-4", "data.crop_scale=[0.5,1.0]"],
    ]
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        expand_sweep(["schedule.lr"])


def test_without_a_sweep_there_is_one_run_as_given():
    assert sweep_runs("fmnist_tiny", ["seed=1"], []) == [("fmnist_tiny", ["seed=1"])]


def test_config_key_picks_the_preset_and_other_keys_override_last():
    runs = sweep_runs("fmnist_tiny", ["schedule.lr=1.0"], ["config=a,b", "schedule.lr=2,3"])
    assert runs == [
        ("a", ["schedule.lr=1.0", "schedule.lr=2"]),
        ("a", ["schedule.lr=1.0", "schedule.lr=3"]),
        ("b", ["schedule.lr=1.0", "schedule.lr=2"]),
        ("b", ["schedule.lr=1.0", "schedule.lr=3"]),
    ]
