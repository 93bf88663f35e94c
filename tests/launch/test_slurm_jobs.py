"""Real training jobs on the local SLURM cluster (``launchers/slurm_cluster/start.sh``).

All jobs are submitted at once by a module fixture so they overlap; each test then waits for
its own. Every job trains the equivalence tests' tiny synthetic setup for real (2 ranks, 20
steps unless said otherwise):

- ``two_nodes``: 2 nodes x 1 task through ``launchers/submit_slurm.py --wait`` (the reference);
- ``preempted``: the same run, preempted with ``job._interrupt()`` once it trained 2 steps;
- ``one_node``: 1 node x 2 tasks, twice, as a 2-task array sweeping a logging-only knob;
- ``time_limit``: 1 task, 2-minute limit, with more training than one allocation can hold;
- ``cancelled``: cancelled as soon as it runs (the first test, so it frees its CPU early).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ijepa_ds.cli.launch_cmd import add_slurm_arguments, launch_options
from ijepa_ds.launch.monitor import JobFailedError, job_results, slurm_state
from ijepa_ds.launch.slurm import SlurmLaunch, Submission, submit
from tests.helpers import REPO
from tests.train.equivalence_worker import OVERRIDES

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 20  # schedule.epochs=5 x 4 steps per epoch (64 synthetic images, global batch 16)
# A 2-minute job with --signal-delay 60 gets USR2 anywhere from ~30 to ~90 s in (SLURM checks
# time limits every ~30 s), so one allocation trains at most ~75 s. Each image takes
# TIME_LIMIT_LOAD_S to load (data.synthetic_load_s), so the job trains at least
# 128 steps x 16 images x 0.05 s = ~102 s however fast the machine computes: it must be requeued.
# (Sized by step count alone, 520 steps once finished inside the first allocation.)
TIME_LIMIT_STEPS = 128
TIME_LIMIT_LOAD_S = 0.05
TIME_LIMIT_TIMEOUT_S = 600  # 2-4 allocations, each up to ~90 s, plus requeue and start-up
TINY = [*OVERRIDES, "schedule.max_steps=0", "logging.jsonl=true", "logging.log_every=1"]
JOB_TIMEOUT_S = 360


@dataclass
class Jobs:
    out: Path
    cli: subprocess.Popen  # launchers/submit_slurm.py --wait, the 2-node reference run
    preempted: Submission
    interrupted: threading.Event  # set once job._interrupt() was sent to ``preempted``
    one_node: list[Submission]  # a job array
    time_limit: Submission
    cancelled: Submission


def _submit(
    out: Path, name: str, options: str, epochs: int = 5, extra: tuple[str, ...] = ()
) -> list[Submission]:
    parser = add_slurm_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [*options.split(), "--job-name", name, "--config", "fmnist_tiny", *TINY, *extra]
        + [f"schedule.epochs={epochs}", f"logging.output_dir={out}", f"logging.run_name={name}_%j"]
    )
    return submit(launch_options(SlurmLaunch, args))


def _interrupt_once_training(sub: Submission, done: threading.Event, min_steps: int = 2) -> None:
    """Preempt ``sub`` (SIGTERM then USR2, as SLURM does) once it logged ``min_steps`` steps.

    Runs in a thread started with the submissions, so the preemption lands mid-run whatever
    order the tests run in.
    """
    metrics = sub.run_dir / "metrics.jsonl"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= min_steps:
            sub.job._interrupt()
            done.set()
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory):
    if len(slurm_cluster.nodes) < 2:
        pytest.skip(f"needs 2 SLURM nodes, the cluster has {slurm_cluster.nodes}")
    out = tmp_path_factory.mktemp("slurm_runs")
    # Longest first: it mostly waits for its time limit.
    (time_limit,) = _submit(
        out, "time_limit", "--time 2 --signal-delay 60 --max-requeues 12", TIME_LIMIT_STEPS // 4,
        extra=(f"data.synthetic_load_s={TIME_LIMIT_LOAD_S}",),
    )  # fmt: skip
    reference = ["--nodes", "2", "--time", "10", "--wait", "--config", "fmnist_tiny", *TINY]
    reference += ["schedule.epochs=5", f"logging.output_dir={out}", "logging.run_name=two_nodes_%j"]
    cli = subprocess.Popen(
        [sys.executable, str(REPO / "launchers" / "submit_slurm.py"), *reference],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    (preempted,) = _submit(out, "preempted", "--nodes 2 --time 10")
    interrupted = threading.Event()
    watcher = threading.Thread(target=_interrupt_once_training, args=(preempted, interrupted))
    watcher.daemon = True
    watcher.start()
    (cancelled,) = _submit(out, "cancelled", "--time 10", epochs=100)
    one_node = _submit(
        out, "one_node", "--tasks-per-node 2 --time 10 --sweep logging.log_every=1,5"
    )
    yield Jobs(out, cli, preempted, interrupted, one_node, time_limit, cancelled)
    cli.kill()
    ids = re.findall(r"submitted job (\S+):", cli.communicate()[0])
    for sub in (preempted, *one_node, time_limit, cancelled):
        ids.append(sub.job.job_id)
    subprocess.run(["scancel", *ids], capture_output=True)


def _two_nodes_run(jobs: Jobs) -> tuple[Path, str]:
    """Wait for the CLI submission; its run folder and stdout."""
    stdout, stderr = jobs.cli.communicate(timeout=JOB_TIMEOUT_S)
    assert jobs.cli.returncode == 0, f"{stdout}\n{stderr[-4000:]}"
    (run_dir,) = jobs.out.glob("two_nodes_*")
    return run_dir, stdout


def _target(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    folder = run_dir / "checkpoints" / f"step_{step:08d}"
    assert (folder / "COMPLETE").is_file()
    return torch.load(folder / "target_encoder.pt", weights_only=True)["state_dict"]


def _logged_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return [r["loss"] for r in records]


def _accounting_states(job_id: str) -> list[str]:
    """States of every run of the job (``sacct --duplicates``), once the last one has ended:
    the result files appear while SLURM still says RUNNING or COMPLETING."""
    deadline = time.monotonic() + 60
    while True:
        states = subprocess.run(
            ["sacct", "-j", job_id, "--duplicates", "-X", "-n", "-P", "-o", "State"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if states and states[-1] not in ("RUNNING", "COMPLETING") or time.monotonic() > deadline:
            return states
        time.sleep(1)


def _assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "final target encoders differ"


def test_cancelled_job_is_reported_as_failed(jobs):
    sub = jobs.cancelled
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while slurm_state(sub.job) != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    subprocess.run(["scancel", sub.job.job_id], check=True)
    with pytest.raises(JobFailedError, match="CANCELLED without a result") as err:
        job_results(sub.job, sub.run_dir, timeout_s=60)
    assert str(sub.run_dir) in str(err.value) and str(sub.job.paths.stderr) in str(err.value)


def test_preempted_job_resumes_from_its_step_checkpoint_exactly(jobs):
    sub = jobs.preempted
    results = job_results(sub.job, sub.run_dir, timeout_s=JOB_TIMEOUT_S)
    assert jobs.interrupted.is_set()
    resumed_at = results[0]["start_step"]
    assert 2 <= resumed_at < STEPS
    assert [(r["restart"], r["final_step"]) for r in results] == [(1, STEPS), (1, STEPS)]
    marker = json.loads(
        (sub.run_dir / "checkpoints" / f"step_{resumed_at:08d}" / "COMPLETE").read_text()
    )
    assert marker["reason"] == "requested+stop"  # saved at the signal's step boundary

    reference, _ = _two_nodes_run(jobs)
    assert _logged_losses(sub.run_dir) == _logged_losses(reference)
    assert results[0]["losses"] == _logged_losses(reference)[resumed_at:]
    _assert_same_params(_target(sub.run_dir, STEPS), _target(reference, STEPS))


def test_two_node_job_through_the_cli_writes_a_complete_run(jobs):
    run_dir, stdout = _two_nodes_run(jobs)
    assert f"COMPLETED step {STEPS}/{STEPS}" in stdout and "ranks on n1,n2" in stdout
    ranks = [
        json.loads((run_dir / "launch" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)
    ]
    assert {r["hostname"] for r in ranks} == {"n1", "n2"}
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert len(_target(run_dir, STEPS)) > 0
    launch = json.loads((run_dir / "launch" / "launch.json").read_text())
    assert launch["git_revision"] and launch["sbatch"]["nodes"] == 2
    with tarfile.open(run_dir / "launch" / "code.tar.gz") as tar:
        names = tar.getnames()
    assert "ijepa_ds/launch/job.py" in names and "ds_configs/zero1.json" in names
    assert (run_dir / "config.yaml").is_file()


def test_one_node_array_of_two_runs_matches_the_two_node_run(jobs):
    reference, _ = _two_nodes_run(jobs)
    array_id = jobs.one_node[0].job.job_id.split("_")[0]
    masters = set()
    for index, sub in enumerate(jobs.one_node):
        results = job_results(sub.job, sub.run_dir, timeout_s=JOB_TIMEOUT_S)
        assert sub.job.job_id == f"{array_id}_{index}"
        assert sub.run_dir.name == f"one_node_{array_id}_{index}"
        assert [r["rank"] for r in results] == [0, 1]
        assert results[0]["hostname"] == results[1]["hostname"]
        assert (results[0]["final_step"], results[0]["restart"]) == (STEPS, 0)
        masters.add(results[0]["master"])
        # The code ran from the submission's snapshot, not from the checkout.
        assert Path(results[0]["code_dir"]).parent.parent == jobs.out / "slurm" / "code"
        # Only the logging interval differs: same parameters as the 2-node x 1-task run.
        _assert_same_params(_target(sub.run_dir, STEPS), _target(reference, STEPS))
    assert len(masters) == 2  # each array task rendezvouses on its own port


def test_job_hitting_its_time_limit_is_requeued_and_completes(jobs):
    sub = jobs.time_limit
    results = job_results(sub.job, sub.run_dir, timeout_s=TIME_LIMIT_TIMEOUT_S)
    assert results[0]["final_step"] == TIME_LIMIT_STEPS
    assert results[0]["restart"] >= 1
    assert len(_logged_losses(sub.run_dir)) == TIME_LIMIT_STEPS
    states = _accounting_states(sub.job.job_id)
    assert states[-1] == "COMPLETED" and "REQUEUED" in states
    attempts = (sub.run_dir / "launch" / "attempts.jsonl").read_text().splitlines()
    assert len(attempts) == results[0]["restart"] + 1
