"""The run-folder lock against real holder processes: refused while one lives (naming it),
free as soon as it is killed (``kill -9``, forked children left running), and taken over by a
SLURM requeue of the same job once its previous attempt is gone."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ijepa_ds.checkpoint import run_lock
from ijepa_ds.checkpoint.run_lock import (
    LOCK_FILE,
    RunLockedError,
    acquire_run_lock,
    agree_on_run_lock,
    slurm_job_id,
)
from tests.helpers import cpu_env

# Locks argv[1], prints "holder <pid>" and sleeps; with "fork", first forks a child that
# prints "child <pid>" (once forked, so after the fork handlers ran) and lives on.
HOLDER = """
import os, sys, time
from ijepa_ds.checkpoint.run_lock import acquire_run_lock
lock = acquire_run_lock(sys.argv[1])
if sys.argv[2] == "fork" and os.fork() == 0:
    print("child", os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
print("holder", os.getpid(), flush=True)
time.sleep(60)
"""


@pytest.fixture
def holders():
    """start(run_dir, job_id=None, fork=False) -> (process, child pid): a live lock holder."""
    started = []

    def start(run_dir, job_id: str | None = None, fork: bool = False):
        env = cpu_env(**({"SLURM_JOB_ID": job_id} if job_id else {}))
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run_dir), "fork" if fork else "-"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(proc)
        pids = {}
        for _ in range(2 if fork else 1):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            pids[line.split()[0]] = int(line.split()[1])
        assert pids["holder"] == proc.pid
        if fork:
            started.append(pids["child"])
        return proc, pids.get("child")

    yield start
    for item in started:
        if isinstance(item, int):
            _kill(item)
        else:
            item.kill()
            item.wait()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)


def test_second_job_is_refused_at_once_naming_the_holder(tmp_path, holders, monkeypatch):
    holder, _ = holders(tmp_path / "run", job_id="111")
    monkeypatch.setenv("SLURM_JOB_ID", "222")
    started = time.monotonic()
    with pytest.raises(RunLockedError, match="is locked by another live job") as err:
        acquire_run_lock(tmp_path / "run")
    assert time.monotonic() - started < 2.0  # no wait: another job id
    message = str(err.value)
    assert f"pid {holder.pid} on {socket.gethostname()}, SLURM job 111, since " in message
    assert str(tmp_path / "run" / LOCK_FILE) in message and "logging.run_name" in message
    record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert record["pid"] == holder.pid and record["slurm_job_id"] == "111"
    assert abs(record["started_unix"] - time.time()) < 60


def test_kill_9_of_the_holder_frees_the_folder_for_a_resume(tmp_path, holders):
    holder, _ = holders(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with acquire_run_lock(tmp_path / "run") as lock:
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["slurm_job_id"] is None


def test_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path, holders):
    # A DataLoader worker outliving a killed rank 0 must not block the resume.
    holder, child = holders(tmp_path / "run", fork=True)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    os.kill(child, 0)  # the child is still alive
    acquire_run_lock(tmp_path / "run").release()


def test_requeue_of_the_same_job_takes_over_once_the_previous_attempt_is_gone(
    tmp_path, holders, monkeypatch
):
    previous, _ = holders(tmp_path / "run", job_id="42")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    threading.Timer(1.0, previous.kill).start()  # SLURM ending the previous attempt
    started = time.monotonic()
    with acquire_run_lock(tmp_path / "run", requeue_wait_s=30) as lock:
        assert 0.9 < time.monotonic() - started < 10
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_requeue_racing_a_previous_attempt_that_stays_alive_is_refused(
    tmp_path, holders, monkeypatch
):
    holders(tmp_path / "run", job_id="42")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    started = time.monotonic()
    with pytest.raises(RunLockedError, match="SLURM job 42"):
        acquire_run_lock(tmp_path / "run", requeue_wait_s=1.0)
    assert time.monotonic() - started >= 1.0


def test_release_is_idempotent_and_the_folder_can_be_locked_again(tmp_path):
    lock = acquire_run_lock(tmp_path / "run")
    with pytest.raises(RunLockedError):  # another open file, even in this process
        acquire_run_lock(tmp_path / "run")
    lock.release()
    lock.release()
    agree_on_run_lock(tmp_path / "run", rank=0).release()  # no process group: rank 0 alone
    assert agree_on_run_lock(tmp_path / "run", rank=1).fd is None  # other ranks hold nothing


def test_file_system_without_flock_trains_unlocked(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    lock = acquire_run_lock(tmp_path / "run")
    assert lock.fd is None
    lock.release()


def test_slurm_job_id_of_an_array_task():
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    env = {"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2"}
    assert slurm_job_id(env) == "5_2"
    assert slurm_job_id({}) is None
