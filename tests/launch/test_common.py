"""The launchers' shared entry point and trainer arguments, through both ``main`` functions."""

from __future__ import annotations

import argparse

import pytest

from ijepa_ds.launch import local, slurm
from ijepa_ds.launch.common import train_argv


def test_train_argv_keeps_only_the_trainer_arguments():
    args = argparse.Namespace(
        config="fmnist_tiny", overrides=["seed=1"], resume="auto", resume_fallback=True, nodes=2
    )
    assert train_argv(args) == [
        "--config",
        "fmnist_tiny",
        "seed=1",
        "--resume",
        "auto",
        "--resume-fallback",
    ]
    args.resume, args.resume_fallback = "", False
    assert train_argv(args) == ["--config", "fmnist_tiny", "seed=1"]


def test_local_main_dry_run_prints_the_command(capsys):
    assert local.main(["--dry-run", "--nproc-per-node", "2", "--config", "fmnist_tiny"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("launching: ") and "torch.distributed.run --nproc-per-node=2" in err


def test_slurm_main_dry_run_prints_the_sbatch_script(capsys, tmp_path):
    argv = ["--dry-run", "--slurm-dir", str(tmp_path), "--config", "fmnist_tiny"]
    assert slurm.main([*argv, f"logging.output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash") and "#SBATCH --job-name=ijepa" in out
    assert f"# run ijepa-%j in {tmp_path}: ijepa-ds train --config fmnist_tiny" in out


@pytest.mark.parametrize(
    "main,argv,message",
    [
        (local.main, ["--nnodes", "2"], "error: --nnodes > 1 needs --master-port"),
        (slurm.main, ["--dry-run", "--time", "soon"], "error: --time 'soon': expected minutes"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(capsys, main, argv, message):
    assert main([*argv, "--config", "fmnist_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


@pytest.mark.parametrize("main,prog", [(local.main, "local"), (slurm.main, "slurm")])
def test_usage_errors_name_the_command(capsys, main, prog):
    with pytest.raises(SystemExit) as info:
        main(["--no-such-flag", "--config", "fmnist_tiny"])
    assert info.value.code == 2
    assert f"usage: ijepa-ds launch {prog}" in capsys.readouterr().err
