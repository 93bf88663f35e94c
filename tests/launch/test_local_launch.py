"""``ijepa-ds launch local`` and ``launchers/run_local.sh``: commands, environment, real runs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ijepa_ds.cli.launch_cmd import add_local_arguments, launch_options
from ijepa_ds.config import ConfigError
from ijepa_ds.launch.local import LocalLaunch, build_command, launch_env, run_local
from tests.helpers import REPO, assert_ok, cpu_env
from tests.train.equivalence_worker import OVERRIDES

RUN_LOCAL = REPO / "launchers" / "run_local.sh"
# The equivalence tests' tiny synthetic setup, 3 steps, with the per-step loss log on.
TINY = [*OVERRIDES, "schedule.max_steps=3", "logging.jsonl=true", "logging.log_every=1"]


def _args(*argv: str) -> LocalLaunch:
    parsed = add_local_arguments(argparse.ArgumentParser()).parse_args(list(argv))
    return launch_options(LocalLaunch, parsed)


def test_torchrun_command_runs_the_trainer_module_with_its_arguments():
    args = _args(
        "--nproc-per-node",
        "2",
        "--config",
        "fmnist_tiny",
        "schedule.lr=1e-3",
        "--resume",
        "auto",
        "--resume-fallback",
    )
    cmd = build_command(args, master_port=29533)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {
        "--nproc-per-node=2",
        "--nnodes=1",
        "--node-rank=0",
        "--master-port=29533",
        "--master-addr=127.0.0.1",
    } <= set(cmd)
    tail = cmd[cmd.index("--module") + 1 :]
    assert tail == [
        "ijepa_ds",
        "train",
        "--config",
        "fmnist_tiny",
        "schedule.lr=1e-3",
        "--resume",
        "auto",
        "--resume-fallback",
    ]


def test_deepspeed_command_uses_hostfile_and_passes_no_local_rank_argument():
    args = _args(
        "--launcher",
        "deepspeed",
        "--nproc-per-node",
        "8",
        "--hostfile",
        "hosts.txt",
        "--config",
        "fmnist_tiny",
    )
    cmd = build_command(args, master_port=29533)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert {
        "--hostfile=hosts.txt",
        "--num_gpus=8",
        "--master_port=29533",
        "--no_local_rank",
    } <= set(cmd)
    assert cmd[cmd.index("--module") + 1 :] == ["ijepa_ds", "train", "--config", "fmnist_tiny"]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--nnodes", "2"], "needs --master-port"),
        (["--nnodes", "2", "--node-rank", "2", "--master-port", "1234"], "outside"),
        (["--hostfile", "h.txt"], "--launcher deepspeed"),
        (["--launcher", "deepspeed", "--nnodes", "2", "--master-port", "1"], "--hostfile"),
        (["--nproc-per-node", "7"], "batch"),  # fmnist_tiny's global batch / 7 ranks
    ],
)
def test_bad_launches_are_refused_before_starting(argv, match):
    with pytest.raises(ConfigError, match=match):
        run_local(_args(*argv, "--dry-run", "--config", "fmnist_tiny"))


def test_fairscale_checkpointing_without_the_package_is_refused_before_starting(monkeypatch):
    monkeypatch.setitem(sys.modules, "fairscale", None)  # as if not installed
    args = _args("--dry-run", "--config", "fmnist_tiny", "model.act_ckpt_impl=fairscale")
    with pytest.raises(ConfigError, match="needs the fairscale package"):
        run_local(args)


def test_environment_defaults_do_not_override_the_caller():
    env = launch_env({"PATH": "/bin"}, "WARNING")
    assert env["OMP_NUM_THREADS"] == "1" and env["LOGLEVEL"] == "WARNING"
    assert env["NCCL_DEBUG"] == "WARN"
    mine = launch_env({"OMP_NUM_THREADS": "8", "NCCL_DEBUG": "TRACE"}, "DEBUG")
    assert mine["OMP_NUM_THREADS"] == "8" and mine["NCCL_DEBUG"] == "TRACE"
    assert mine["TORCH_CPP_LOG_LEVEL"] == "INFO"


def _run_local_sh(*argv: str) -> subprocess.CompletedProcess:
    env = cpu_env()
    env.pop("OMP_NUM_THREADS")  # the launcher's default must provide it
    return subprocess.run(
        ["bash", str(RUN_LOCAL), *argv], env=env, capture_output=True, text=True, timeout=300
    )


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
@pytest.mark.distributed
def test_run_local_sh_trains_two_ranks_and_deepspeed_launcher_agrees(tmp_path):
    common = ["--config", "fmnist_tiny", *TINY, f"logging.output_dir={tmp_path}"]
    assert_ok(_run_local_sh("2", *common, "logging.run_name=torchrun"))
    run = tmp_path / "torchrun"
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert "| 2 ranks (env)" in (run / "logs" / "rank0.log").read_text()

    assert_ok(_run_local_sh("2", "--launcher", "deepspeed", *common, "logging.run_name=ds"))
    assert len(_losses(run)) == 3
    assert _losses(tmp_path / "ds") == _losses(run)
