"""Launcher environments resolve strictly; partial or contradictory ones are errors."""

from __future__ import annotations

import pytest

from ijepa_ds.distributed import detect_dist_env, first_slurm_host, slurm_master_port

TORCHRUN = {
    "RANK": "1",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29500",
    "LOCAL_WORLD_SIZE": "2",
}
SRUN = {
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "123456",
}


def test_torchrun_and_deepspeed_launcher():
    env = detect_dist_env(TORCHRUN)
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (1, 1, 2, "env")
    assert (env.master_addr, env.master_port) == ("10.0.0.5", 29500)
    # the deepspeed launcher also passes --local_rank
    assert detect_dist_env(TORCHRUN, cli_local_rank=1).local_rank == 1
    with pytest.raises(ValueError, match="--local_rank=0 contradicts LOCAL_RANK=1"):
        detect_dist_env(TORCHRUN, cli_local_rank=0)


def test_plain_srun_derives_everything_from_slurm():
    env = detect_dist_env(SRUN)
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (3, 1, 4, "slurm")
    assert env.master_addr == "gpu07"
    assert env.master_port == slurm_master_port(123456) == 20000 + 123456 % 20000
    step_tasks = dict(SRUN, SLURM_STEP_NUM_TASKS="8")
    assert detect_dist_env(step_tasks).world_size == 8


def test_torch_variables_win_inside_slurm():
    env = detect_dist_env({**SRUN, **TORCHRUN})
    assert env.launcher == "env" and env.world_size == 2


def test_single_process_without_any_launcher():
    env = detect_dist_env({})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "single")
    with pytest.raises(ValueError, match="without a launcher"):
        detect_dist_env({}, cli_local_rank=2)


@pytest.mark.parametrize(
    "env,match",
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing"),
        (
            {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
            "RANK missing",
        ),
        ({**TORCHRUN, "RANK": "2"}, r"RANK=2 is outside \[0, WORLD_SIZE=2\)"),
        ({**TORCHRUN, "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({**TORCHRUN, "LOCAL_RANK": "3"}, "LOCAL_RANK=3 >= LOCAL_WORLD_SIZE=2"),
        ({k: v for k, v in SRUN.items() if k != "SLURM_JOB_ID"}, "SLURM_JOB_ID missing"),
        ({**SRUN, "SLURM_PROCID": "4"}, r"SLURM_PROCID=4 is outside \[0, 4\)"),
    ],
)
def test_partial_or_conflicting_environment_is_an_error(env, match):
    with pytest.raises(ValueError, match=match):
        detect_dist_env(env)


def test_world_of_one_may_omit_master():
    env = detect_dist_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    assert env.world_size == 1 and env.master_port > 0


@pytest.mark.parametrize(
    "nodelist,first",
    [
        ("n1", "n1"),
        ("n[1-3]", "n1"),
        ("gpu[07-08,11],cpu3", "gpu07"),
        ("a-b01,a-b02", "a-b01"),
        ("node[003,010-012]", "node003"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


SHUTDOWN_SCRIPT = """
import torch.distributed as dist
from deepspeed.utils import groups
from ijepa_ds.distributed import detect_dist_env, free_port
from ijepa_ds.backend.comm import abandon_distributed, init_distributed, shutdown_distributed
shutdown_distributed()  # no group yet: nothing to do
abandon_distributed()
for close in (shutdown_distributed, abandon_distributed):
    env = detect_dist_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    init_distributed(env)
    assert dist.is_initialized() and groups._WORLD_GROUP is not None
    close()
    assert not dist.is_initialized() and groups._WORLD_GROUP is None, close.__name__
    close()  # twice is fine
print("ok")
"""


def test_shutdown_and_abandon_destroy_every_group_and_are_idempotent():
    import subprocess
    import sys

    from tests.helpers import cpu_env

    proc = subprocess.run([sys.executable, "-c", SHUTDOWN_SCRIPT], env=cpu_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


STARTS = ("init_distributed(", "init_process_group(")
ENDS = ("shutdown_distributed(", "destroy_process_group(")
# The package starts groups in run_training and the eval runner; these are what call them.
ENTRY_POINTS = ("ijepa_ds/cli/train_cmd.py", "ijepa_ds/eval/run.py", "ijepa_ds/launch/job.py")


def test_every_script_that_starts_a_group_destroys_it():
    """A gloo group left to the interpreter's finalisers can abort the process at exit
    ("terminate called without an active exception": a worker thread of the group frees a
    tensor after Python has begun to shut down). Every entry point that starts a group must
    destroy it after a clean finish: each script of the tests and benchmarks, and the
    package's own entry points."""
    from tests.helpers import REPO

    scripts = [
        p
        for folder in ("tests", "bench")
        for p in sorted((REPO / folder).rglob("*.py"))
        if p.name != "test_distributed.py"
    ]
    missing = [
        str(p.relative_to(REPO))
        for p in scripts
        if any(s in (text := p.read_text()) for s in STARTS) and not any(e in text for e in ENDS)
    ]
    missing += [e for e in ENTRY_POINTS if "shutdown_distributed()" not in (REPO / e).read_text()]
    assert missing == []
