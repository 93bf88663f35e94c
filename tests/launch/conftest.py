"""The ``slurm_cluster`` fixture: a reachable SLURM cluster with accounting, or a skip.

It looks for ``$SLURM_CONF``, else the configuration written by
``launchers/slurm_cluster/start.sh`` (``$IJEPA_SLURM_ROOT``, default ``/tmp/ijepa-slurm``), and
never runs a SLURM client without one: without a config, SLURM 22.05 clients fall back to a DNS
SRV lookup ("configless" mode).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

START_HINT = "start one with: bash launchers/slurm_cluster/start.sh"


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the cluster."""

    conf: str
    nodes: tuple[str, ...]  # nodes that answer (idle, mixed or allocated)


def _find_conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    root = Path(os.environ.get("IJEPA_SLURM_ROOT", "/tmp/ijepa-slurm"))
    conf = root / "etc" / "slurm.conf"
    return str(conf) if conf.is_file() else None


def _run(cmd: list[str], conf: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, env={**os.environ, "SLURM_CONF": conf}, capture_output=True, text=True, timeout=15
    )


def probe_cluster() -> tuple[SlurmCluster | None, str]:
    """(cluster, "") when usable, else (None, why not)."""
    conf = _find_conf()
    if conf is None:
        return None, f"SLURM_CONF is not set and no test cluster config exists; {START_HINT}"
    if not Path(conf).is_file():  # clients would fall back to a DNS lookup
        return None, f"SLURM_CONF={conf} does not exist; {START_HINT}"
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return None, f"SLURM clients (sinfo, sacct) are not installed; {START_HINT}"
    try:
        sinfo = _run(["sinfo", "-h", "-N", "-o", "%N %T"], conf)
        sacct = _run(["sacct", "-n", "-X", "-S", "now"], conf)
    except subprocess.TimeoutExpired:
        return None, f"SLURM controller for {conf} does not answer; {START_HINT}"
    if sinfo.returncode != 0:
        return None, f"sinfo failed for {conf}: {sinfo.stderr.strip()}; {START_HINT}"
    if sacct.returncode != 0:
        return None, (
            f"sacct failed ({sacct.stderr.strip()}): without accounting submitit cannot tell a "
            "cancelled job from a running one"
        )
    # "idle*" (a trailing mark) means not responding, drained, powered down...: not up.
    up = ("idle", "mixed", "allocated", "completing")
    nodes = tuple(line.split()[0] for line in sinfo.stdout.splitlines() if line.split()[-1] in up)
    if not nodes:
        return None, f"no SLURM node is up ({sinfo.stdout.strip()!r}); {START_HINT}"
    return SlurmCluster(conf=conf, nodes=nodes), ""


@pytest.fixture(scope="session")
def slurm_cluster():
    """The cluster, with ``SLURM_CONF`` exported for the test process and the jobs it submits
    (submitit runs sbatch with this environment; jobs inherit it)."""
    cluster, reason = probe_cluster()
    if cluster is None:
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.conf
    yield cluster
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
