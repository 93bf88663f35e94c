"""Waiting for submitted jobs and saying clearly how each one ended.

submitit's own ``result()`` polls ``sacct`` with a growing back-off and caches finished states;
here the state is refreshed every ``poll_s`` seconds, and a job that ended without a result
(cancelled, out of requeues, node failure) raises :class:`JobFailedError` naming the job, its
SLURM state, its run folder and the tail of its log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)
_NO_RESULT = "without a result (cancelled, out of time or requeues, or its node failed)"


class JobFailedError(RuntimeError):
    """A job ended without a result or raised; the message says which, where and why."""


def slurm_state(job: Any) -> str:
    """The job's current SLURM state from a fresh ``sacct`` call (``CANCELLED by 0`` ->
    ``CANCELLED``); ``UNKNOWN`` before accounting knows the job."""
    state = job.get_info(mode="force").get("State") or "UNKNOWN"
    return state.split()[0]


def _log_tail(job: Any, lines: int = 15) -> str:
    text = job.stderr() or ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _failure(job: Any, run_dir: Path, state: str, detail: str) -> JobFailedError:
    tail = _log_tail(job)
    return JobFailedError(
        f"job {job.job_id} ended {state} {detail}\n  run folder: {run_dir}\n"
        f"  log: {job.paths.stderr}" + (f"\n  last lines:\n{tail}" if tail else "")
    )


def job_results(job: Any, run_dir: Path, poll_s: float = 2.0, timeout_s: float | None = None):
    """Wait for ``job``; its per-task results, or :class:`JobFailedError`.

    A job has ended when every task wrote its result or SLURM reports a final state; a
    requeued job (``PENDING``/``REQUEUED``) has not.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state = slurm_state(job)
        if job.done() or state in FINAL_STATES:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job.job_id} still {state} after {timeout_s:.0f} s")
        time.sleep(poll_s)
    import submitit

    if state in FINAL_STATES and state != "COMPLETED" and not job.paths.result_pickle.exists():
        # submitit would wait ~15 s more for a result file that will never come.
        raise _failure(job, run_dir, state, _NO_RESULT)
    try:
        return job.results()
    except submitit.core.utils.FailedJobError as err:  # a subclass of UncompletedJobError
        last_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise _failure(job, run_dir, "FAILED", f"with an error: {last_line}") from err
    except submitit.core.utils.UncompletedJobError:
        raise _failure(job, run_dir, slurm_state(job), _NO_RESULT) from None


def wait_all(submissions: Sequence[Any], poll_s: float = 2.0) -> list[str]:
    """Wait for every submission; one summary line each. Raises the first failure after all
    jobs have ended (so one failure does not hide the others' results)."""
    lines, failures = [], []
    for sub in submissions:
        try:
            results = job_results(sub.job, sub.run_dir, poll_s)
        except JobFailedError as err:
            failures.append(err)
            lines.append(f"job {sub.job.job_id}: FAILED ({str(err).splitlines()[0]})")
            continue
        main = results[0]
        hosts = ",".join(r["hostname"] for r in results)
        lines.append(
            f"job {sub.job.job_id}: COMPLETED step {main['final_step']}/{main['total_steps']}, "
            f"final loss {main['losses'][-1] if main['losses'] else float('nan'):.4f}, "
            f"restarts {main['restart']}, ranks on {hosts}, run {sub.run_dir}"
        )
    if failures:
        raise JobFailedError("\n".join(lines) + "\n\n" + "\n\n".join(map(str, failures)))
    return lines
