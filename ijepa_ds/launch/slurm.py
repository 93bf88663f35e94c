"""``ijepa-ds launch slurm``: submit training runs to SLURM through submitit.

::

    ijepa-ds launch slurm --nodes 2 --tasks-per-node 8 --gpus-per-node 8 --time 4320 \\
        --partition learn --config vit_h14_in1k logging.run_name=vith_%j --wait
    ijepa-ds launch slurm --config vit_b16_in1k --sweep schedule.lr=1e-3,5e-4   # a job array

Per submission, the ``ijepa_ds`` package is copied into ``<slurm-dir>/code/<stamp>/`` and the
jobs run from that copy (their working directory), so editing the checkout while jobs wait or
requeue changes nothing; ``code.tar.gz`` and ``launch.json`` (command, sbatch options, git
revision) from there land in each run folder's ``launch/``. The run folder is
``<logging.output_dir>/<logging.run_name>`` with ``%j`` / ``{job_id}`` replaced by the job id
(default name ``<job-name>-%j``); a requeued job keeps its id, hence its folder, and resumes
there (``--resume auto``). Job logs: ``<slurm-dir>/<job id>/``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ijepa_ds.config import ConfigError
from ijepa_ds.launch.sweep import sweep_runs
from ijepa_ds.train.args import TrainArgs

# What the jobs run from: the package and, from a checkout, the DeepSpeed JSON files it looks up
# beside itself (an installed wheel carries them inside, as ijepa_ds/ds_configs/).
SNAPSHOT_ITEMS = ("ijepa_ds", "ds_configs")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


# Options written as ``#SBATCH --NAME=VALUE`` when set (``mem`` too, checked first).
SBATCH_PASSTHROUGH = ("partition", "account", "qos", "constraint", "exclude")


@dataclass(frozen=True)
class SlurmLaunch:
    """``launch slurm``: the allocation, the jobs, and the training run each job does.

    Resources: nodes x tasks_per_node ranks (one per GPU), gpus_per_node, cpus_per_task,
    mem per node (``64G``), time (minutes, ``H:M:S`` or ``D-H:M:S``), the plain ``#SBATCH``
    passthroughs (partition, account, qos, constraint, exclude; ``""`` = not set) and sbatch,
    any other option as ``KEY[=VALUE]``. Jobs: job_name; sweep, ``KEY=V1,V2`` grids (one
    array job per member); slurm_dir, job logs and code copies (``""`` = under the output
    dir); signal_delay, seconds before the limit at which a job saves and requeues;
    max_requeues; wait, block and report; dry_run, print the sbatch script only.
    """

    train: TrainArgs
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str = ""
    time: str = "60"
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclude: str = ""
    sbatch: tuple[str, ...] = ()
    job_name: str = "ijepa"
    sweep: tuple[str, ...] = ()
    slurm_dir: str = ""
    signal_delay: int = 120
    max_requeues: int = 3
    wait: bool = False
    dry_run: bool = False

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


def parse_time(value: str) -> int:
    """SLURM time limit to whole minutes: ``90``, ``1:30:00``, ``2-00:00:00`` or ``1-12``.

    Forms as in ``sbatch --time``: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``;
    seconds round up.
    """
    match = _TIME_RE.match(value.strip())
    if not match:
        raise ConfigError(f"--time {value!r}: expected minutes, H:M:S or D-H:M:S")
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        hours += int(days) * 24
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return hours * 60 + minutes + (1 if seconds else 0)


def sbatch_options(args: SlurmLaunch, workdir: str) -> dict[str, Any]:
    """``submitit.SlurmExecutor`` parameters (each one an ``#SBATCH`` line) from the options."""
    minutes = parse_time(args.time)
    if args.signal_delay >= minutes * 60:
        raise ConfigError(
            f"--signal-delay {args.signal_delay} s must be shorter than --time ({minutes} min): "
            "the save-and-requeue signal would arrive at once"
        )
    if args.mem and not _MEM_RE.match(args.mem):
        raise ConfigError(f"--mem {args.mem!r}: expected a size such as 64G or 500M")
    extra: dict[str, Any] = {"chdir": workdir}
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        extra[key.lstrip("-")] = value if sep else True
    options: dict[str, Any] = {
        "job_name": args.job_name,
        "nodes": args.nodes,
        "ntasks_per_node": args.tasks_per_node,
        "cpus_per_task": args.cpus_per_task,
        "time": minutes,
        "signal_delay_s": args.signal_delay,
        "additional_parameters": extra,
        # One OpenMP thread per CPU given to the task unless the caller chose otherwise.
        "setup": ["export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"],
    }
    if args.gpus_per_node:
        options["gpus_per_node"] = args.gpus_per_node
    for name in ("mem", *SBATCH_PASSTHROUGH):
        if getattr(args, name):
            options[name] = getattr(args, name)
    return options


@dataclass
class Submission:
    """One submitted run: the submitit job and where its run folder will be."""

    job: Any  # submitit.Job
    run_dir: Path
    train: TrainArgs


def snapshot_code(dest: Path, record: dict) -> Path:
    """Copy the ``ijepa_ds`` package (and ``ds_configs/`` beside it, which the trainer reads
    from there) to ``dest``, where the jobs import it from; write ``code.tar.gz`` and
    ``launch.json`` next to it."""
    import ijepa_ds
    from ijepa_ds.train.run_dir import git_revision

    root = Path(ijepa_ds.__file__).resolve().parent.parent
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    names = [name for name in SNAPSHOT_ITEMS if (root / name).is_dir()]
    with tarfile.open(dest / "code.tar.gz", "w:gz") as tar:
        for name in names:
            shutil.copytree(root / name, dest / name, ignore=ignore)
            tar.add(dest / name, arcname=name)
    record = {**record, "git_revision": git_revision(), "source": str(root)}
    (dest / "launch.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return dest


def _runs(args: SlurmLaunch) -> list[tuple[TrainArgs, str, str]]:
    """(train args, run-name template, output dir) per sweep member, each config validated."""
    from ijepa_ds.config import load_config, validate_config

    members = sweep_runs(args.train.config, list(args.train.overrides), list(args.sweep))
    runs = []
    for config, overrides in members:
        cfg = load_config(config, overrides)
        validate_config(cfg, world_size=args.world_size)
        template = cfg.logging.run_name or f"{args.job_name}-%j"
        if len(members) > 1 and "%j" not in template and "{job_id}" not in template:
            raise ConfigError(
                f"logging.run_name={template!r} is shared by {len(members)} sweep runs: "
                "put %j or {job_id} in it"
            )
        train = replace(args.train, config=config, overrides=tuple(overrides))
        runs.append((train, template, str(Path(cfg.logging.output_dir).resolve())))
    return runs


def _slurm_dir(args: SlurmLaunch, runs: list) -> Path:
    return Path(args.slurm_dir or Path(runs[0][2]) / "slurm").resolve()


def submit(args: SlurmLaunch) -> list[Submission]:
    """Validate every run's config, snapshot the code, submit (an array for a sweep)."""
    import submitit

    from ijepa_ds.launch.job import TrainingJob, resolve_run_name

    runs = _runs(args)
    slurm_dir = _slurm_dir(args, runs)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**6:06d}"
    code = slurm_dir / "code" / stamp
    options = sbatch_options(args, workdir=str(code))
    record = [(train.argv(), name, out) for train, name, out in runs]
    snapshot_code(code, {"argv": sys.argv, "sbatch": options, "runs": record, "time": time.time()})
    executor = submitit.SlurmExecutor(folder=slurm_dir / "%j", max_num_timeout=args.max_requeues)
    executor.update_parameters(**options)
    calls = [TrainingJob(train, name, out, str(code)) for train, name, out in runs]
    if len(calls) == 1:
        jobs = [executor.submit(calls[0])]
    else:  # one job array; the ids exist once the batch context closes
        with executor.batch():
            jobs = [executor.submit(call) for call in calls]
    return [
        Submission(job, Path(out) / resolve_run_name(name, job.job_id), train)
        for job, (train, name, out) in zip(jobs, runs)
    ]


def dry_run_text(args: SlurmLaunch) -> str:
    """The sbatch script and the trainer arguments that ``submit`` would use."""
    from submitit.slurm.slurm import _make_sbatch_string

    runs = _runs(args)
    slurm_dir = _slurm_dir(args, runs)
    options = sbatch_options(args, workdir=str(slurm_dir / "code" / "<stamp>"))
    script = _make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit {slurm_dir / '%j'}",
        folder=slurm_dir / "%j",
        map_count=len(runs) if len(runs) > 1 else None,
        **options,
    )
    lines = [script] + [
        f"# run {name} in {out}: ijepa-ds train {' '.join(t.argv())}" for t, name, out in runs
    ]
    return "\n".join(lines)


def run_slurm(args: SlurmLaunch) -> int:
    """Submit (or print with --dry-run); with --wait, 0 only if every job completed."""
    from ijepa_ds.launch.monitor import JobFailedError, wait_all

    if args.dry_run:
        print(dry_run_text(args))
        return 0
    submissions = submit(args)
    for sub in submissions:
        print(
            f"submitted job {sub.job.job_id}: run folder {sub.run_dir}, log {sub.job.paths.stdout}",
            flush=True,
        )
    if not args.wait:
        return 0
    try:
        lines = wait_all(submissions)
    except JobFailedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
