"""SLURM launcher pieces that need no cluster: rank variables, ports, run names, preemption
signal routing, sbatch option mapping, sweeps."""

from __future__ import annotations

import argparse
import os
import pickle
import signal
from dataclasses import dataclass

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from ijepa_ds.checkpoint.policy import SavePolicy
from ijepa_ds.cli.launch_cmd import add_slurm_arguments, launch_options
from ijepa_ds.config import ConfigError
from ijepa_ds.distributed import detect_dist_env, slurm_master_port
from ijepa_ds.launch import job as job_module
from ijepa_ds.launch.job import (
    TrainingJob,
    dist_env_vars,
    install_preemption_handler,
    preemption_signal,
    resolve_run_name,
)
from ijepa_ds.launch.slurm import SlurmLaunch, dry_run_text, parse_time, sbatch_options
from ijepa_ds.train.args import TrainArgs


@dataclass
class FakeJobEnv:
    """The JobEnvironment fields the launcher reads, for task 3 of a 2 x 2 job."""

    global_rank: int = 3
    local_rank: int = 1
    num_tasks: int = 4
    num_nodes: int = 2
    hostnames: tuple = ("gpu-a17", "gpu-b02")
    raw_job_id: str = "4242"


def test_rank_variables_come_from_the_job_environment():
    env = dist_env_vars(FakeJobEnv())
    assert env == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu-a17",
        "MASTER_PORT": str(slurm_master_port(4242)),
    }
    # The trainer's strict detection reads them as a complete launcher environment, even with
    # SLURM's own variables present.
    slurm_vars = {"SLURM_PROCID": "3", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "4242"}
    dist = detect_dist_env({**slurm_vars, **env})
    assert (dist.rank, dist.local_rank, dist.world_size) == (3, 1, 4)
    assert (dist.master_addr, dist.master_port, dist.launcher) == ("gpu-a17", 24242, "env")


def test_uneven_tasks_per_node_leave_local_world_size_unset():
    env = dist_env_vars(FakeJobEnv(num_tasks=3, global_rank=2, local_rank=0))
    assert "LOCAL_WORLD_SIZE" not in env and env["WORLD_SIZE"] == "3"


def test_master_port_follows_the_job_id_not_a_fixed_value():
    ports = {
        int(dist_env_vars(FakeJobEnv(raw_job_id=str(j)))["MASTER_PORT"]) for j in range(100, 140)
    }
    assert len(ports) == 40 and all(20000 <= p < 40000 for p in ports)


@pytest.mark.parametrize(
    "template,job_id,expected",
    [
        ("vith_%j", "123", "vith_123"),
        ("run-{job_id}", "123_4", "run-123_4"),
        ("a%j_{job_id}", "7", "a7_7"),
        ("fixed", "9", "fixed"),
    ],
)
def test_run_name_gets_the_job_id(template, job_id, expected):
    assert resolve_run_name(template, job_id) == expected


@pytest.fixture
def restore_preemption_signal():
    sig = preemption_signal()
    previous = signal.getsignal(sig)
    yield sig
    signal.signal(sig, previous)


def test_preemption_signal_requests_save_and_stop(restore_preemption_signal):
    sig = restore_preemption_signal
    seen = []
    signal.signal(sig, lambda *a: seen.append(a))  # stands in for submitit's handler
    policy = SavePolicy(every_steps=0, every_minutes=0, save_at_end=True, total_steps=10)
    handler = install_preemption_handler(policy)
    assert handler.previous is not None and handler.previous is not signal.SIG_DFL
    os.kill(os.getpid(), sig)
    assert policy.stop_requested and policy.save_requested
    assert seen == []  # replaced, not chained: submitit's requeue must wait for the save
    assert policy.decide(3) == ("requested+stop", True)


def test_signal_before_the_policy_exists_is_kept(restore_preemption_signal):
    handler = install_preemption_handler()
    os.kill(os.getpid(), restore_preemption_signal)
    policy = SavePolicy(every_steps=0, every_minutes=0, save_at_end=True, total_steps=10)
    assert not policy.stop_requested
    handler.attach(policy)
    assert policy.stop_requested


def test_usr1_cannot_be_the_preemption_signal(monkeypatch):
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    with pytest.raises(ValueError, match="save-and-continue"):
        preemption_signal()


def test_attach_routes_the_signal_to_the_policy():
    from ijepa_ds.checkpoint.policy import SavePolicy

    handler = job_module.PreemptionHandler(signal.SIGUSR2)
    policy = SavePolicy(0, 0, True, 5)
    handler.attach(policy)  # what run_training(args, on_policy=handler.attach) does
    assert handler.policy is policy


def test_checkpoint_resubmits_the_same_job_without_saving(tmp_path):
    job = TrainingJob(TrainArgs("fmnist_tiny"), "r_%j", str(tmp_path))
    delayed = job.checkpoint()
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}
    assert list(tmp_path.iterdir()) == []
    clone = pickle.loads(pickle.dumps(job))  # submitit pickles it by reference to our module
    assert clone.train == job.train and clone.run_name == "r_%j"


def test_resume_is_auto_once_the_run_has_a_checkpoint(tmp_path):
    assert job_module._resume_argument("", tmp_path) == "auto"
    assert job_module._resume_argument("/pre/step_00000100", tmp_path) == "/pre/step_00000100"
    ckpt = tmp_path / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("{}")
    assert job_module._resume_argument("/pre/step_00000100", tmp_path) == "auto"


@pytest.mark.parametrize(
    "text,minutes",
    [
        ("90", 90),
        ("1:30:00", 90),
        ("2-00:00:00", 2880),
        ("1-12", 2160),
        ("10:30", 11),
        ("0-0:1", 1),
    ],
)
def test_time_limit_forms(text, minutes):
    assert parse_time(text) == minutes


def test_bad_time_limit_is_an_error():
    with pytest.raises(ConfigError, match="--time"):
        parse_time("soon")


def _slurm_args(*argv: str) -> SlurmLaunch:
    parser = add_slurm_arguments(argparse.ArgumentParser())
    return launch_options(SlurmLaunch, parser.parse_args([*argv, "--config", "fmnist_tiny"]))


def test_options_map_to_sbatch_lines(tmp_path):
    args = _slurm_args(
        "--nodes",
        "4",
        "--tasks-per-node",
        "8",
        "--gpus-per-node",
        "8",
        "--cpus-per-task",
        "10",
        "--mem",
        "480G",
        "--time",
        "3-00:00:00",
        "--partition",
        "learn",
        "--account",
        "vision",
        "--qos",
        "high",
        "--constraint",
        "volta32gb",
        "--exclude",
        "gpu-[1-3]",
        "--sbatch",
        "reservation=r1",
        "--sbatch",
        "exclusive",
        "--job-name",
        "vith",
        "--signal-delay",
        "300",
    )
    script = _make_sbatch_string(command="true", folder=tmp_path, **sbatch_options(args, "/c"))
    for line in [
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=10",
        "--mem=480G",
        "--time=4320",
        "--partition=learn",
        "--account=vision",
        "--qos=high",
        "--constraint=volta32gb",
        "--exclude='gpu-[1-3]'",
        "--reservation=r1",
        "--exclusive",
        "--job-name=vith",
        "--signal=USR2@300",
        "--chdir=/c",
    ]:  # submitit shell-quotes values with special characters; sbatch strips the quotes
        assert f"#SBATCH {line}\n" in script, line
    assert "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}" in script


def test_unset_options_leave_no_sbatch_line(tmp_path):
    script = _make_sbatch_string(
        command="true", folder=tmp_path, **sbatch_options(_slurm_args(), "/c")
    )
    for flag in (
        "--partition",
        "--account",
        "--qos",
        "--constraint",
        "--exclude",
        "--mem=",
        "--gpus-per-node",
    ):
        assert f"#SBATCH {flag}" not in script


def test_signal_must_come_before_the_time_limit():
    with pytest.raises(ConfigError, match="signal-delay"):
        sbatch_options(_slurm_args("--time", "2", "--signal-delay", "120"), "/c")


def test_memory_must_be_a_size():
    with pytest.raises(ConfigError, match="--mem"):
        sbatch_options(_slurm_args("--mem", "lots"), "/c")


def test_sweep_is_one_array_with_a_run_per_value(tmp_path):
    text = dry_run_text(
        _slurm_args(
            "--slurm-dir",
            str(tmp_path),
            "--sweep",
            "schedule.lr=1e-3,5e-4",
            f"logging.output_dir={tmp_path}",
        )
    )
    assert "#SBATCH --array=0-1%2" in text
    assert "schedule.lr=1e-3" in text and "schedule.lr=5e-4" in text
    assert text.count(f"# run ijepa-%j in {tmp_path}") == 2


def test_sweep_with_a_fixed_run_name_is_refused(tmp_path):
    args = _slurm_args("--sweep", "schedule.lr=1e-3,5e-4", "logging.run_name=shared")
    with pytest.raises(ConfigError, match="shared by 2 sweep runs"):
        dry_run_text(args)


def test_config_is_validated_for_the_job_world_size():
    # fmnist_tiny's global batch does not split over 7 ranks: refused before any sbatch.
    with pytest.raises(ConfigError, match="batch"):
        dry_run_text(_slurm_args("--nodes", "7"))
