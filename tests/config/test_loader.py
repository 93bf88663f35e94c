"""Loading: defaults < YAML < overrides, strict keys and types, dumping and hashing."""

from __future__ import annotations

import re

import pytest
import yaml

from ijepa_ds.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_hash,
    config_to_dict,
    dump_yaml,
    list_presets,
    load_config,
    parse_override,
)


def _write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_no_source_gives_the_defaults():
    assert load_config(None) == Config()
    assert load_config() == Config()


def test_yaml_subset_keeps_other_defaults_and_converts_types(tmp_path):
    path = _write(tmp_path, "seed: 3\ndata:\n  batch_size: 32\n  crop_scale: [0.5, 1]\nema:\n")
    cfg = load_config(path)
    assert cfg.seed == 3 and cfg.data.batch_size == 32
    assert cfg.data.crop_scale == (0.5, 1.0) and isinstance(cfg.data.crop_scale[1], float)
    assert cfg.data.crop_size == Config().data.crop_size
    assert cfg.ema == Config().ema  # an empty section is allowed


def test_overrides_apply_last_and_parse_yaml_values(tmp_path):
    path = _write(tmp_path, "schedule:\n  lr: 0.5\n  epochs: 7\n")
    cfg = load_config(
        path,
        [
            "schedule.lr=1e-3",
            "data.crop_scale=[0.4, 0.9]",
            "data.use_horizontal_flip=true",
            "schedule.warmup_epochs=2",
            "eval.linear_lrs=[0.1]",
        ],
    )
    assert cfg.schedule.lr == 1e-3 and cfg.schedule.epochs == 7
    assert cfg.data.crop_scale == (0.4, 0.9)
    assert cfg.data.use_horizontal_flip is True
    assert cfg.schedule.warmup_epochs == 2.0 and isinstance(cfg.schedule.warmup_epochs, float)
    assert cfg.eval.linear_lrs == (0.1,)


def test_later_override_wins():
    cfg = load_config(None, ["data.batch_size=8", "data.batch_size=16"])
    assert cfg.data.batch_size == 16


def test_exponent_floats_without_a_dot_are_numbers_in_yaml_files(tmp_path):
    # YAML 1.1 (PyYAML) would read these as strings.
    cfg = load_config(_write(tmp_path, "schedule:\n  final_lr: 1e-6\n  start_lr: 2E-4\n"))
    assert cfg.schedule.final_lr == 1e-6 and cfg.schedule.start_lr == 2e-4


def test_other_yaml_scalars_are_untouched_by_the_float_fix():
    assert parse_override("logging.run_name=1.2.3") == ("logging.run_name", "1.2.3")
    assert parse_override("data.batch_size=0x10") == ("data.batch_size", 16)


def test_string_fields_keep_the_raw_override_text():
    assert parse_override("logging.run_name=2024") == ("logging.run_name", "2024")
    assert parse_override("logging.run_name=true") == ("logging.run_name", "true")
    assert parse_override("logging.run_name=") == ("logging.run_name", "")
    assert load_config(None, ["logging.run_name='a b'"]).logging.run_name == "a b"


def test_a_whole_section_override_merges_key_by_key():
    cfg = load_config("fmnist_tiny", ["ema={momentum_start: 0.98}"])
    assert (cfg.ema.momentum_start, cfg.ema.momentum_end) == (0.98, 0.999)
    assert cfg.data.crop_size == 28


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.batch_sze=3"], "Unknown config key 'data.batch_sze'. Did you mean data.batch_size"),
        (["optim.lr=1e-3"], "Unknown config key 'optim.lr'. Did you mean schedule.lr?"),
        (["dat.batch_size=3"], "Unknown config key 'dat'. Did you mean data?"),
        (["model.patch_size.x=1"], "Unknown config key 'model.patch_size.x'"),
        (["lr=0.1"], "Did you mean schedule.lr?"),
    ],
)
def test_unknown_override_keys_name_the_path_and_a_close_match(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, overrides)


def test_unknown_yaml_keys_name_the_full_path_and_a_close_match(tmp_path):
    path = _write(tmp_path, "data:\n  batch_sze: 3\n")
    with pytest.raises(
        ValueError, match=re.escape("'data.batch_sze'. Did you mean data.batch_size")
    ):
        load_config(path)
    with pytest.raises(ValueError, match=re.escape("'mask.min_kep'. Did you mean mask.min_keep?")):
        load_config(_write(tmp_path, "mask:\n  min_kep: 3\n"))


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.batch_size=true", "data.batch_size: expected int, got bool True"),
        ("data.batch_size=64.0", "data.batch_size: expected int, got float 64.0"),
        ("data.batch_size=abc", "data.batch_size: expected int, got str 'abc'"),
        ("schedule.lr=fast", "schedule.lr: expected number, got str 'fast'"),
        ("schedule.lr=false", "schedule.lr: expected number, got bool False"),
        ("data.pin_memory=1", "data.pin_memory: expected bool, got int 1"),
        ("data.crop_scale=[0.3, 0.5, 1.0]", "data.crop_scale: expected a list of 2 numbers"),
        ("data.crop_scale=0.5", "data.crop_scale: expected a list of 2 numbers, got float 0.5"),
        ("data.crop_scale=[a, 1.0]", "data.crop_scale[0]: expected number, got str 'a'"),
        ("eval.linear_lrs=0.1", "eval.linear_lrs: expected a list of numbers"),
        ("data=3", "data: expected a mapping"),
    ],
)
def test_wrong_types_are_rejected_with_the_key_path(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, [override])


def test_ints_are_accepted_where_floats_are_expected():
    cfg = load_config(None, ["schedule.lr=1", "ema.momentum_end=1"])
    assert cfg.schedule.lr == 1.0 and type(cfg.schedule.lr) is float


def test_wrong_types_in_yaml_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=re.escape("optim.betas: expected a list of 2 numbers")):
        load_config(_write(tmp_path, "optim:\n  betas: [0.9]\n"))
    with pytest.raises(ValueError, match=re.escape("model: expected a mapping")):
        load_config(_write(tmp_path, "model: vit_base\n"))


@pytest.mark.parametrize("item", ["data.batch_size", "=3", "  =3"])
def test_malformed_overrides_are_rejected(item):
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, [item])


def test_override_with_broken_yaml_names_the_override():
    with pytest.raises(ValueError, match=re.escape("data.crop_scale=[0.3")):
        load_config(None, ["data.crop_scale=[0.3"])


def test_unknown_preset_or_missing_file_names_it_and_lists_presets(tmp_path):
    with pytest.raises(ValueError, match="'fmnist_tiy'.*Did you mean fmnist_tiny") as exc:
        load_config("fmnist_tiy")
    for name in list_presets():
        assert name in str(exc.value)
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match=re.escape(missing)):
        load_config(missing)


def test_yaml_that_is_not_a_mapping_is_rejected_and_empty_yaml_is_defaults(tmp_path):
    with pytest.raises(ValueError, match="mapping of sections"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))
    assert load_config(_write(tmp_path, "# nothing\n")) == Config()
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [1,\n"))


def test_dumped_yaml_reloads_to_the_same_config(tmp_path):
    cfg = load_config("fmnist_tiny", ["schedule.final_lr=1e-7", "data.crop_scale=[0.35, 1]"])
    path = tmp_path / "resolved.yaml"
    text = dump_yaml(cfg, path)
    assert path.read_text() == text
    assert load_config(str(path)) == cfg
    assert list(yaml.safe_load(text)) == ["seed", *(k for k in config_to_dict(cfg) if k != "seed")]


def test_config_to_dict_is_plain_data_and_round_trips():
    cfg = load_config("vit_h14_in1k")
    data = config_to_dict(cfg)
    assert data["data"]["crop_scale"] == [0.3, 1.0]
    assert config_from_dict(data) == cfg


def test_config_hash_is_stable_and_sensitive():
    a, b = load_config("fmnist_tiny"), load_config("fmnist_tiny")
    assert config_hash(a) == config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash(a))
    changed = load_config("fmnist_tiny", ["schedule.lr=0.0011"])
    assert config_hash(changed) != config_hash(a)
    assert config_hash(load_config("fmnist_tiny", ["seed=1"])) != config_hash(a)


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`


def test_renamed_mask_compat_still_loads_with_a_deprecation_message(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("mask:\n  compat: ijepa_ds\n")
    with pytest.warns(FutureWarning, match=r"write mask\.sampler=step_seeded"):
        assert load_config(str(path)).mask.sampler == "step_seeded"
    with pytest.warns(FutureWarning, match=r"mask\.compat is deprecated"):
        assert load_config("fmnist_tiny", ["mask.compat=reference"]).mask.sampler == "reference"


def test_renamed_key_rejects_unknown_values_and_both_names_at_once(tmp_path):
    with pytest.raises(ConfigError, match=r"mask\.compat='official' must be one of 'ijepa_ds'"):
        load_config(None, ["mask.compat=official"])
    path = tmp_path / "both.yaml"
    path.write_text("mask:\n  compat: reference\n  sampler: step_seeded\n")
    with pytest.raises(ConfigError, match=r"mask\.compat and mask\.sampler are both set"):
        load_config(str(path))
