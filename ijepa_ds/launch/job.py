"""What runs inside a SLURM job submitted by ``ijepa-ds launch slurm`` (one process per task).

``TrainingJob`` is the submitit callable. On every task it

1. exports RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from ``submitit.JobEnvironment``
   (master = first host of the allocation, port derived from the job id: never ``$HOSTNAME``
   with a fixed port, which breaks as soon as two jobs share a node);
2. fills the job id into the run name, records the attempt in ``<run_dir>/launch/``;
3. replaces submitit's preemption handler (USR2, sent by ``scancel --signal`` or ``--signal``
   before the time limit) with one that asks the trainer's ``SavePolicy`` to save at the next
   step boundary and stop, on every rank;
4. runs the trainer with ``--resume auto``, so a requeued job continues from its checkpoint
   (the trainer's run-folder lock lets a requeue take over from its own previous attempt);
   SIGTERM stays with submitit, which ignores it ("bypass").

When training stopped early because of that signal, rank 0 hands over to submitit's own
handler, which calls ``checkpoint()`` and ``scontrol requeue``. ``checkpoint()`` therefore does
NOT save: submitit runs it on rank 0 only, inside a signal handler, where a collective save
would hang; the save already happened on all ranks together.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import submitit

from ijepa_ds.distributed import slurm_master_port
from ijepa_ds.observability import get_logger
from ijepa_ds.train.args import TrainArgs

log = get_logger(__name__)

LAUNCH_DIR = "launch"
# How long ranks other than 0 wait for the requeue to kill them before giving up.
REQUEUE_WAIT_S = 180.0


class JobEnvLike(Protocol):
    """The fields of ``submitit.JobEnvironment`` the launcher reads."""

    global_rank: int
    local_rank: int
    num_tasks: int
    num_nodes: int
    hostnames: list[str]
    raw_job_id: str


def dist_env_vars(env: JobEnvLike) -> dict[str, str]:
    """torch.distributed variables for this task of the job (read by ``detect_dist_env``)."""
    variables = {
        "RANK": str(env.global_rank),
        "LOCAL_RANK": str(env.local_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "MASTER_ADDR": env.hostnames[0],
        "MASTER_PORT": str(slurm_master_port(int(env.raw_job_id))),
    }
    if env.num_tasks % env.num_nodes == 0:
        variables["LOCAL_WORLD_SIZE"] = str(env.num_tasks // env.num_nodes)
    return variables


def resolve_run_name(template: str, job_id: str) -> str:
    """Fill ``%j`` / ``{job_id}`` with submitit's job id (``123``, or ``123_4`` in an array)."""
    return template.replace("%j", job_id).replace("{job_id}", job_id)


def preemption_signal() -> signal.Signals:
    """submitit's preemption/time-out signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, name, None)
    if sig is None or sig == signal.SIGUSR1:
        raise ValueError(
            f"preemption signal {name} is unusable: USR1 is the trainer's save-and-continue "
            "signal; use USR2 (the default)"
        )
    return signal.Signals(sig)


class PreemptionHandler:
    """Signal handler: ask the save policy to save at the next step boundary and stop.

    The signal may arrive before the policy exists (during start-up); the request is kept and
    applied when a policy is attached. ``previous`` is the handler it replaced (submitit's).
    """

    def __init__(self, signum: signal.Signals):
        self.signum = signum
        self.policy = None
        self.requested = False
        self.previous: Any = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.policy is not None:
            self.policy.request_stop()

    def attach(self, policy) -> None:
        self.policy = policy
        if self.requested:
            policy.request_stop()


def install_preemption_handler(
    policy=None, signum: signal.Signals | None = None
) -> PreemptionHandler:
    """Route the preemption signal (USR2) on this rank to ``policy.request_stop()``.

    Every rank installs it, so the collective ``SavePolicy.decide`` sees the request wherever
    the signal lands, and all ranks save together at the same step boundary.
    """
    handler = PreemptionHandler(signum or preemption_signal())
    handler.previous = signal.getsignal(handler.signum)
    signal.signal(handler.signum, handler)
    if policy is not None:
        handler.attach(policy)
    return handler


def restart_count() -> int:
    """How many times SLURM requeued this job so far (0 on the first run)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def _resume_argument(user_resume: str, run_dir: Path) -> str:
    """``auto`` once the run has a checkpoint of its own; before that the user's choice."""
    from ijepa_ds.checkpoint.layout import complete_checkpoints

    if user_resume in ("", "auto") or complete_checkpoints(run_dir):
        return "auto"
    return user_resume


def _export_snapshot_revision(snapshot: Path | None) -> None:
    """Jobs import a code snapshot that is no git checkout: pass its recorded revision on."""
    record = snapshot / "launch.json" if snapshot is not None else None
    if record is not None and record.is_file():
        revision = json.loads(record.read_text()).get("git_revision")
        if revision:
            os.environ["IJEPA_DS_GIT_REVISION"] = revision


def _record_attempt(run_dir: Path, snapshot: Path | None, env, rank: int) -> None:
    """Per-rank host record; on rank 0 also the launch record and code archive (once)."""
    launch = run_dir / LAUNCH_DIR
    (launch / "ranks").mkdir(parents=True, exist_ok=True)
    attempt = {
        "job_id": env.job_id,
        "restart": restart_count(),
        "rank": rank,
        "hostname": socket.gethostname(),
        "time": time.time(),
    }
    (launch / "ranks" / f"rank{rank}.json").write_text(json.dumps(attempt) + "\n")
    if rank != 0:
        return
    with open(launch / "attempts.jsonl", "a") as f:
        f.write(json.dumps({**attempt, "hostnames": list(env.hostnames)}) + "\n")
    if snapshot is not None:
        for name in ("launch.json", "code.tar.gz"):
            if (snapshot / name).is_file() and not (launch / name).exists():
                shutil.copy2(snapshot / name, launch / name)


def _wait_for_requeue(rank: int) -> None:
    """Ranks > 0 after a preemption stop: rank 0 requeues the job, which kills this process.

    Returning instead would make submitit write this task's result as if the run had ended
    (and the client could read that stale result after the real end). If rank 0 cannot
    requeue (no requeues left), this rank fails after ``REQUEUE_WAIT_S``.
    """
    deadline = time.monotonic() + REQUEUE_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(1.0)
    raise RuntimeError(
        f"rank {rank}: training stopped for preemption but the job was not requeued within "
        f"{REQUEUE_WAIT_S:.0f} s; see rank 0's log for why"
    )


def _hand_over_to_submitit(handler: PreemptionHandler, rank: int, step: int, total: int) -> None:
    """After a preemption stop (checkpoint saved by all ranks): rank 0 runs submitit's own
    handler (``checkpoint()``, ``scontrol requeue``, exit); the others wait to be killed by the
    requeue. Outside submitit (no previous handler) it returns and the caller reports."""
    if not callable(handler.previous):
        return
    log.warning(
        "stopped at step %d of %d on the preemption signal, checkpoint saved; %s",
        step,
        total,
        "requeueing" if rank == 0 else "waiting for rank 0 to requeue the job",
    )
    if rank == 0:
        handler.previous(handler.signum, None)
    else:
        _wait_for_requeue(rank)


class TrainingJob(submitit.helpers.Checkpointable):
    """The submitit callable: one training run (all tasks of one job run the same object).

    Args:
        train: the training run (config, overrides, resume); the job adds its run folder.
        run_name: template of ``logging.run_name`` with ``%j`` or ``{job_id}``.
        output_dir: absolute ``logging.output_dir``.
        snapshot: folder with the code copy, ``launch.json`` and ``code.tar.gz`` (or None).
    """

    def __init__(
        self, train: TrainArgs, run_name: str, output_dir: str, snapshot: str | None = None
    ):
        self.train = train
        self.run_name = run_name
        self.output_dir = output_dir
        self.snapshot = snapshot

    def __call__(self) -> dict:
        env = submitit.JobEnvironment()
        os.environ.update(dist_env_vars(env))
        handler = install_preemption_handler()
        return self.run(env, handler)

    def run(self, env, handler: PreemptionHandler) -> dict:
        """Train with the variables already exported; hand over to submitit on preemption."""
        from ijepa_ds.backend.comm import shutdown_distributed
        from ijepa_ds.train.main import run_training

        run_dir = Path(self.output_dir) / resolve_run_name(self.run_name, env.job_id)
        args = self.train.with_overrides(
            f"logging.output_dir={self.output_dir}", f"logging.run_name={run_dir.name}"
        )
        args = replace(args, resume=_resume_argument(args.resume, run_dir))
        snapshot = self.snapshot and Path(self.snapshot)
        _export_snapshot_revision(snapshot)
        # Records are written once the run folder is locked: a job refused because another
        # live job holds the folder leaves that job's records alone. No SIGTERM/SIGINT
        # handling: submitit's own handler bypasses SIGTERM, and the preemption signal
        # already saves and stops (module docstring).
        result = run_training(
            args,
            on_policy=handler.attach,
            stop_signals=(),
            on_locked=lambda folder: _record_attempt(folder, snapshot, env, env.global_rank),
        )
        total = handler.policy.total_steps
        final = result["start_step"] + len(result["losses"])
        preempted = final < total
        if preempted:
            shutdown_distributed()  # every rank stopped at this step, its checkpoint saved
            _hand_over_to_submitit(handler, env.global_rank, final, total)
        else:
            # Done: a time-limit signal arriving now (while the interpreter shuts down, when
            # Python handlers may no longer run) would kill the task and mark the job FAILED.
            signal.signal(handler.signum, signal.SIG_IGN)
            shutdown_distributed()
        return {
            **result,
            "rank": env.global_rank,
            "hostname": socket.gethostname(),
            "job_id": env.job_id,
            "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            "restart": restart_count(),
            "final_step": final,
            "total_steps": total,
            "preempted": preempted,
            "code_dir": str(Path(__file__).resolve().parent.parent),  # the snapshot it ran
        }

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same callable; it resumes with ``--resume auto``. Saves nothing: see the
        module docstring (rank 0 only, inside a signal handler)."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
