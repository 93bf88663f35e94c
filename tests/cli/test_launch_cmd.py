"""``launch local|slurm`` options into typed launches, and the stand-alone entry points."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ijepa_ds.cli.launch_cmd import (
    add_local_arguments,
    add_slurm_arguments,
    launch_options,
    local_main,
    slurm_main,
)
from ijepa_ds.launch.local import LocalLaunch
from ijepa_ds.launch.slurm import SlurmLaunch

pytestmark = pytest.mark.fast


def test_launch_keeps_only_the_trainer_arguments_in_its_train_args():
    parser = add_slurm_arguments(argparse.ArgumentParser())
    argv = ["--nodes", "2", "--config", "fmnist_tiny", "seed=1", "--resume", "auto"]
    args = launch_options(SlurmLaunch, parser.parse_args([*argv, "--resume-fallback"]))
    assert args.nodes == 2 and args.train.overrides == ("seed=1",)
    assert args.train.argv() == [
        "--config",
        "fmnist_tiny",
        "seed=1",
        "--resume",
        "auto",
        "--resume-fallback",
    ]
    fresh = dataclasses.replace(args.train, resume="", resume_fallback=False)
    assert fresh.argv() == ["--config", "fmnist_tiny", "seed=1"]


@pytest.mark.parametrize(
    "add,cls", [(add_local_arguments, LocalLaunch), (add_slurm_arguments, SlurmLaunch)]
)
def test_every_launch_field_is_a_command_line_option_with_the_same_default(add, cls):
    parsed = add(argparse.ArgumentParser()).parse_args(["--config", "c"])
    launch = launch_options(cls, parsed)
    assert launch == cls(train=launch.train)  # parser defaults are the dataclass defaults


def test_local_main_dry_run_prints_the_command(capsys):
    assert local_main(["--dry-run", "--nproc-per-node", "2", "--config", "fmnist_tiny"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("launching: ") and "torch.distributed.run --nproc-per-node=2" in err


def test_slurm_main_dry_run_prints_the_sbatch_script(capsys, tmp_path):
    argv = ["--dry-run", "--slurm-dir", str(tmp_path), "--config", "fmnist_tiny"]
    assert slurm_main([*argv, f"logging.output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash") and "#SBATCH --job-name=ijepa" in out
    assert f"# run ijepa-%j in {tmp_path}: ijepa-ds train --config fmnist_tiny" in out


@pytest.mark.parametrize(
    "main,argv,message",
    [
        (local_main, ["--nnodes", "2"], "error: --nnodes > 1 needs --master-port"),
        (slurm_main, ["--dry-run", "--time", "soon"], "error: --time 'soon': expected minutes"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(capsys, main, argv, message):
    assert main([*argv, "--config", "fmnist_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


@pytest.mark.parametrize("main,prog", [(local_main, "local"), (slurm_main, "slurm")])
def test_usage_errors_name_the_command(capsys, main, prog):
    with pytest.raises(SystemExit) as info:
        main(["--no-such-flag", "--config", "fmnist_tiny"])
    assert info.value.code == 2
    assert f"usage: ijepa-ds launch {prog}" in capsys.readouterr().err
