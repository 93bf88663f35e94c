"""`ijepa-ds config show|list|fields` through main() and one real subprocess."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ijepa_ds.cli.main import COMMANDS, build_parser, main
from ijepa_ds.config import config_hash, dump_yaml, iter_fields, list_presets, load_config

REPO = Path(__file__).resolve().parents[2]


def test_show_prints_the_resolved_config_as_yaml(capsys):
    assert main(["config", "show", "fmnist_tiny", "optim.precision=bf16"]) == 0
    out = capsys.readouterr().out
    expected = load_config("fmnist_tiny", ["optim.precision=bf16"])
    assert out == dump_yaml(expected)
    assert yaml.safe_load(out)["optim"]["precision"] == "bf16"


def test_show_with_hash_prints_the_config_hash_first(capsys):
    assert main(["config", "show", "vit_b16_in1k", "--hash"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"# config_hash: {config_hash(load_config('vit_b16_in1k'))}"


def test_config_errors_go_to_stderr_with_exit_code_2(capsys):
    assert main(["config", "show", "fmnist_tiny", "data.batch_sze=3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "data.batch_sze" in captured.err and "Did you mean data.batch_size" in captured.err
    assert "Traceback" not in captured.err


def test_show_validates_rules_world_size_and_paths(capsys, tmp_path):
    assert main(["config", "show", "fmnist_tiny", "model.patch_size=5"]) == 2
    assert "model.patch_size=5" in capsys.readouterr().err
    assert main(["config", "show", "fmnist_tiny", "model.patch_size=5", "--no-validate"]) == 0
    capsys.readouterr()
    assert main(["config", "show", "vit_h14_in1k", "--world-size", "16"]) == 0
    capsys.readouterr()
    assert main(["config", "show", "vit_h14_in1k", "--world-size", "3"]) == 2
    assert "world size 3" in capsys.readouterr().err
    missing = tmp_path / "absent"
    assert main(["config", "show", "fmnist_tiny", f"data.root={missing}", "--check-paths"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_unknown_preset_lists_the_presets(capsys):
    assert main(["config", "show", "no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and all(name in err for name in list_presets())


def test_list_and_fields(capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    assert main(["config", "fields"]) == 0
    out = capsys.readouterr().out
    assert all(f"{info.path} (" in out and info.help in out for info in iter_fields())
    assert main(["config", "fields", "ema"]) == 0
    assert capsys.readouterr().out.startswith("ema.momentum_start (number, default 0.996)")
    assert main(["config", "fields", "nope"]) == 2


def test_commands_register_their_own_subparsers():
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=1)
        parser.set_defaults(func=lambda args: args.steps)

    parser = build_parser([*COMMANDS, ("extra", "a further command", configure)])
    args = parser.parse_args(["extra", "--steps", "5"])
    assert args.func(args) == 5
    args = parser.parse_args(["config", "show", "fmnist_tiny", "seed=4"])
    assert (args.config, args.overrides) == ("fmnist_tiny", ["seed=4"])


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ijepa_ds", "config", "show", "fmnist_tiny"]
    ok = subprocess.run([*cmd, "optim.precision=bf16"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["optim"]["precision"] == "bf16"
    bad = subprocess.run([*cmd, "optim.precison=bf16"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert "optim.precison" in bad.stderr and "Traceback" not in bad.stderr
