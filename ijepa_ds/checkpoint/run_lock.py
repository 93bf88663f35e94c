"""One live job per run folder: an exclusive ``flock`` on ``<run_dir>/run.lock``.

Two jobs training into one folder (a SLURM requeue racing a job that is still running, a
relaunch by hand) would both write step folders, move ``latest`` and prune each other's
checkpoints. Rank 0 therefore takes ``flock(LOCK_EX | LOCK_NB)`` on the lock file before
anything is written to the folder and holds it for the rest of the run; the outcome is
broadcast, so a refused job stops on every rank at once with the holder's name, instead of
its other ranks waiting for a collective timeout.

The file records the holder (host, pid, SLURM job id, start time) for that message; only the
``flock`` counts, never the file's existence or content. The kernel releases a ``flock`` when
the last descriptor of it closes, that is when the holder exits, however it exits (``kill
-9``, an out-of-memory kill): a lock left behind by a dead job never blocks a resume. Children
forked by the holder (DataLoader workers) close their copy at once, so one outliving a killed
rank 0 does not keep the folder locked. After node loss on a network file system the lock
lasts until the server notices (an NFSv4 lease, about 90 s).

A SLURM requeue keeps its job id. A job whose own job id holds the lock is that job's
previous attempt, which SLURM is ending: it waits up to ``requeue_wait_s`` for that process
to go, then takes over; if it is still alive after that it is refused like any other job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

# Plain logging (the package logger all the same): importing the lock costs no torch import.
log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
REQUEUE_WAIT_S = 120.0
_POLL_S = 0.5
_held_fds: set[int] = set()  # closed in forked children, see _close_in_child


def _close_in_child() -> None:
    """A forked child shares the parent's lock; closing its descriptor (never ``LOCK_UN``,
    which would unlock the parent too) lets the lock go with the parent alone."""
    for fd in _held_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLockedError(RuntimeError):
    """The run folder is locked by another live job."""


def slurm_job_id(env: Mapping[str, str] | None = None) -> str | None:
    """``123`` or, in an array, ``100_4`` (array job id and task id); None outside SLURM."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def holder_record() -> dict:
    """Who takes the lock: written into the lock file, quoted to a refused job."""
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": slurm_job_id(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now)),
        "started_unix": now,
    }


def describe_holder(record: dict | None) -> str:
    if not record:
        return "a job that has not recorded itself yet"
    job = f", SLURM job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
    return f"pid {record.get('pid')} on {record.get('host')}{job}, since {record.get('started')}"


def _read_record(fd: int, tries: int = 3) -> dict | None:
    """The holder's record; None when unreadable (a holder that has just locked may not have
    written it yet, hence a few tries)."""
    for attempt in range(tries):
        try:
            text = os.pread(fd, 65536, 0).decode()
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        if attempt + 1 < tries:
            time.sleep(0.1)
    return None


class RunLock:
    """The held lock (``fd`` is None where there is nothing to release). Idempotent
    ``release``; also a context manager."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        _held_fds.discard(self.fd)
        os.close(self.fd)  # the last descriptor: the kernel drops the lock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_flock(fd: int) -> bool:
    """True when locked; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def acquire_run_lock(run_dir: str | Path, requeue_wait_s: float = REQUEUE_WAIT_S) -> RunLock:
    """Lock ``run_dir`` (created if missing) for this process, or raise ``RunLockedError``
    naming the holder. Refuses at once unless the holder has this job's SLURM id (a requeue:
    see the module docstring). A file system without ``flock`` gives a warning and no lock.
    """
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _acquire(fd, path, requeue_wait_s)
    except BaseException:
        os.close(fd)
        raise
    if not locked:
        os.close(fd)
        return RunLock(path, None)
    _held_fds.add(fd)
    data = (json.dumps(holder_record()) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    return RunLock(path, fd)


def _acquire(fd: int, path: Path, requeue_wait_s: float) -> bool:
    """Lock ``fd`` (True), find no ``flock`` support (False), or raise ``RunLockedError``."""
    deadline = None
    while True:
        try:
            if _try_flock(fd):
                return True
        except OSError as err:
            if err.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            log.warning("%s: no flock on this file system (%s): run folder NOT locked", path, err)
            return False
        record = _read_record(fd)
        mine = slurm_job_id()
        requeue = mine is not None and record is not None and record.get("slurm_job_id") == mine
        if deadline is None and requeue:
            deadline = time.monotonic() + requeue_wait_s
            log.warning(
                "run folder locked by the previous attempt of SLURM job %s (%s): waiting up to "
                "%.0f s for it to end",
                mine,
                describe_holder(record),
                requeue_wait_s,
            )
        if deadline is None or time.monotonic() >= deadline:
            raise RunLockedError(
                f"run folder {path.parent} is locked by another live job: "
                f"{describe_holder(record)} ({path}). Two jobs in one folder would overwrite "
                "each other's checkpoints: wait for that job to end or stop it, or train into "
                "another logging.run_name"
            )
        time.sleep(_POLL_S)


def agree_on_run_lock(
    run_dir: str | Path, rank: int, requeue_wait_s: float = REQUEUE_WAIT_S
) -> RunLock:
    """Collective: rank 0 locks ``run_dir`` and tells every rank the outcome. A refusal
    raises the same ``RunLockedError`` on every rank at once, a failure to create the lock
    file the same ``OSError``. Other ranks get a ``RunLock`` with nothing to release."""
    import torch.distributed as dist

    lock, outcome = RunLock(Path(run_dir) / LOCK_FILE, None), [None]
    if rank == 0:
        try:
            lock = acquire_run_lock(run_dir, requeue_wait_s)
        except RunLockedError as err:
            outcome = [("locked", str(err))]
        except OSError as err:
            outcome = [("error", f"cannot lock run folder {run_dir}: {err}")]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        kind, message = outcome[0]
        raise RunLockedError(message) if kind == "locked" else OSError(message)
    return lock
