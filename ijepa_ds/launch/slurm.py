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

import argparse
import json
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ijepa_ds.cli.train_cmd import add_train_arguments
from ijepa_ds.config import ConfigError
from ijepa_ds.launch.common import launcher_main, train_argv
from ijepa_ds.launch.sweep import sweep_runs

# What the jobs run from: the package and, from a checkout, the DeepSpeed JSON files it looks up
# beside itself (an installed wheel carries them inside, as ijepa_ds/ds_configs/).
SNAPSHOT_ITEMS = ("ijepa_ds", "ds_configs")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


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


def sbatch_options(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
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
    for name in ("mem", "partition", "account", "qos", "constraint", "exclude"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    return options


@dataclass
class Submission:
    """One submitted run: the submitit job and where its run folder will be."""

    job: Any  # submitit.Job
    run_dir: Path
    train_argv: list[str]


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


def _runs(args: argparse.Namespace, world_size: int) -> list[tuple[list[str], str, str]]:
    """(train argv, run-name template, output dir) per sweep member, each config validated."""
    from ijepa_ds.config import load_config, validate_config

    members = sweep_runs(args.config, args.overrides, args.sweep)
    runs = []
    for config, overrides in members:
        cfg = load_config(config, overrides)
        validate_config(cfg, world_size=world_size)
        template = cfg.logging.run_name or f"{args.job_name}-%j"
        if len(members) > 1 and "%j" not in template and "{job_id}" not in template:
            raise ConfigError(
                f"logging.run_name={template!r} is shared by {len(members)} sweep runs: "
                "put %j or {job_id} in it"
            )
        argv = train_argv(
            argparse.Namespace(**{**vars(args), "config": config, "overrides": overrides})
        )
        runs.append((argv, template, str(Path(cfg.logging.output_dir).resolve())))
    return runs


def _slurm_dir(args: argparse.Namespace, runs: list) -> Path:
    return Path(args.slurm_dir or Path(runs[0][2]) / "slurm").resolve()


def submit(args: argparse.Namespace) -> list[Submission]:
    """Validate every run's config, snapshot the code, submit (an array for a sweep)."""
    import submitit

    from ijepa_ds.launch.job import TrainingJob, resolve_run_name

    runs = _runs(args, args.nodes * args.tasks_per_node)
    slurm_dir = _slurm_dir(args, runs)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**6:06d}"
    code = slurm_dir / "code" / stamp
    options = sbatch_options(args, workdir=str(code))
    snapshot_code(code, {"argv": sys.argv, "sbatch": options, "runs": runs, "time": time.time()})
    executor = submitit.SlurmExecutor(folder=slurm_dir / "%j", max_num_timeout=args.max_requeues)
    executor.update_parameters(**options)
    calls = [TrainingJob(argv, name, out, str(code)) for argv, name, out in runs]
    if len(calls) == 1:
        jobs = [executor.submit(calls[0])]
    else:  # one job array; the ids exist once the batch context closes
        with executor.batch():
            jobs = [executor.submit(call) for call in calls]
    return [
        Submission(job, Path(out) / resolve_run_name(name, job.job_id), argv)
        for job, (argv, name, out) in zip(jobs, runs)
    ]


def add_slurm_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``launch slurm`` followed by the trainer's own arguments."""
    g = parser.add_argument_group("SLURM resources")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--tasks-per-node", type=int, default=1, help="ranks per node (= GPUs)")
    g.add_argument("--gpus-per-node", type=int, default=0)
    g.add_argument("--cpus-per-task", type=int, default=1)
    g.add_argument("--mem", default="", help="memory per node, e.g. 64G")
    g.add_argument("--time", default="60", help="time limit: minutes, H:M:S or D-H:M:S")
    for name in ("partition", "account", "qos", "constraint", "exclude"):
        g.add_argument(f"--{name}", default="")
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="any other sbatch option, e.g. --sbatch reservation=r1 --sbatch exclusive",
    )
    j = parser.add_argument_group("jobs")
    j.add_argument("--job-name", default="ijepa")
    j.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="one job per value (grid over several --sweep), submitted as one array; "
        "KEY 'config' sweeps the preset",
    )
    j.add_argument(
        "--slurm-dir",
        default="",
        help="job logs and code copies (default <logging.output_dir>/slurm)",
    )
    j.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        help="seconds before the time limit at which the job saves and requeues",
    )
    j.add_argument(
        "--max-requeues", type=int, default=3, help="time-outs/preemptions a job may requeue after"
    )
    j.add_argument("--wait", action="store_true", help="wait for the jobs and report")
    j.add_argument("--dry-run", action="store_true", help="print the sbatch script only")
    return add_train_arguments(parser)


def dry_run_text(args: argparse.Namespace) -> str:
    """The sbatch script and the trainer arguments that ``submit`` would use."""
    from submitit.slurm.slurm import _make_sbatch_string

    runs = _runs(args, args.nodes * args.tasks_per_node)
    slurm_dir = _slurm_dir(args, runs)
    options = sbatch_options(args, workdir=str(slurm_dir / "code" / "<stamp>"))
    script = _make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit {slurm_dir / '%j'}",
        folder=slurm_dir / "%j",
        map_count=len(runs) if len(runs) > 1 else None,
        **options,
    )
    lines = [script] + [
        f"# run {name} in {out}: ijepa-ds train {' '.join(a)}" for a, name, out in runs
    ]
    return "\n".join(lines)


def run_slurm(args: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ijepa_ds.launch.slurm``: the same as ``ijepa-ds launch slurm``."""
    return launcher_main("ijepa-ds launch slurm", add_slurm_arguments, run_slurm, argv)


if __name__ == "__main__":
    raise SystemExit(main())
