"""Two live jobs on one run folder: the second ``ijepa-ds train`` is refused within seconds,
naming the holder, and writes nothing; the first finishes with all its checkpoints."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from ijepa_ds.checkpoint.run_lock import LOCK_FILE
from tests.helpers import REPO, cpu_env, train_command
from tests.reliability.fault_worker import BASE
from tests.reliability.faults import checkpoint_names, latest_name, run_worker

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
RUN = ("schedule.max_steps=5", "checkpoint.every_steps=1", "checkpoint.keep_last=5")


def _files(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_second_job_on_a_live_run_folder_is_refused_and_the_first_finishes(tmp_path):
    run_dir, gate = tmp_path / "runs" / "job", tmp_path / "go"
    first: list = []
    # Job A pauses at the start of step 3 (steps 1 and 2 saved) until the gate file exists.
    thread = threading.Thread(
        target=lambda: first.append(
            run_worker(tmp_path, "a", "job", f"pause-step:3:{gate}", overrides=RUN)
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while checkpoint_names(run_dir) != ["step_00000001", "step_00000002"]:
            assert thread.is_alive() and time.monotonic() < deadline, first
            time.sleep(0.1)
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        before = _files(run_dir)

        # Job B: the real CLI, same folder, another learning rate.
        started = time.monotonic()
        second = subprocess.run(
            train_command(2, "--config", "fmnist_tiny", *BASE, *RUN, "schedule.lr=9e-3",
                          f"logging.output_dir={run_dir.parent}", "logging.run_name=job"),
            env=cpu_env(), cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        seconds = time.monotonic() - started
        assert _files(run_dir) == before  # B wrote nothing: no config, logs, checkpoints
    finally:
        gate.touch()
        thread.join(240)

    assert second.returncode != 0 and second.stderr.count("exitcode  : 3") == 2, second.stderr
    # Startup (torchrun, imports, process group) is most of it; no collective timeout.
    assert seconds < 60, seconds
    message = f"run folder {run_dir} is locked by another live job: pid {holder['pid']} on "
    assert second.stderr.count(message) == 2  # one line per rank
    assert f"since {holder['started']}" in second.stderr
    assert str(REPO / "ijepa_ds") not in second.stderr  # no traceback from our code

    job = first[0]
    assert job.returncode == 0, job.describe()
    assert [len(job.ranks[r]["losses"]) for r in (0, 1)] == [5, 5]
    assert checkpoint_names(run_dir) == [f"step_{s:08d}" for s in range(1, 6)]
    assert latest_name(run_dir) == "step_00000005"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["schedule"]["lr"] == 3e-3  # A's
