"""Damaged checkpoints: each one is an error naming the file and what is wrong with it, raised
before any weights load; ``--resume-fallback`` takes the previous complete checkpoint instead."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from ijepa_ds.checkpoint.resume import (
    CheckpointError,
    agree_on_resume,
    prepare_resume,
    resolve_resume,
)
from ijepa_ds.config import load_config
from ijepa_ds.distributed import DistEnv
from tests.reliability.fault_worker import BASE
from tests.reliability.faults import checkpoint_names, run_worker

NEWEST, PREVIOUS = "step_00000002", "step_00000001"
SHARD0 = "engine/zero_pp_rank_0_mp_rank_00_optim_states.pt"


def _truncate(name: str):
    def damage(step: Path) -> None:
        data = (step / name).read_bytes()
        (step / name).write_bytes(data[: len(data) // 2])

    return damage


def _delete(name: str):
    return lambda step: (step / name).unlink()


def _replace_state(step: Path) -> None:
    torch.save({"step": 2}, step / "train_state.pt")  # loads fine, but is not a train state


# (damage of the newest checkpoint, file the error names, what it says is wrong)
DAMAGE = {
    "truncated-optimizer-shard": (_truncate(SHARD0), SHARD0, "truncated or corrupt"),
    "truncated-model-states": (
        _truncate("engine/mp_rank_00_model_states.pt"),
        "engine/mp_rank_00_model_states.pt",
        "truncated or corrupt",
    ),
    "missing-optimizer-shard": (
        _delete("engine/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        "engine",
        "lacks the optimizer of rank(s) [1]",
    ),
    "missing-model-states": (
        _delete("engine/mp_rank_00_model_states.pt"),
        "engine/mp_rank_00_model_states.pt",
        "is missing",
    ),
    "missing-target": (_delete("target_encoder.pt"), "target_encoder.pt", "is missing"),
    "truncated-target": (
        _truncate("target_encoder.pt"),
        "target_encoder.pt",
        "truncated or corrupt",
    ),
    "truncated-train-state": (
        _truncate("train_state.pt"),
        "train_state.pt",
        "truncated or corrupt",
    ),
    "foreign-train-state": (_replace_state, "train_state.pt", "train state lacks"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_names_the_file_and_fallback_takes_the_previous(run_copy, kind):
    damage, name, problem = DAMAGE[kind]
    newest = run_copy / "checkpoints" / NEWEST
    damage(newest)
    expected = re.escape(str(newest / name)) + ".*" + re.escape(problem)
    with pytest.raises(CheckpointError, match=expected) as info:
        resolve_resume(run_copy, "auto")
    assert "--resume-fallback" in str(info.value)
    assert resolve_resume(run_copy, "auto", fallback=True) == run_copy / "checkpoints" / PREVIOUS


def test_latest_naming_a_vanished_folder(run_copy):
    shutil.rmtree(run_copy / "checkpoints" / NEWEST)
    with pytest.raises(CheckpointError, match=f"latest names {NEWEST}, which is missing"):
        resolve_resume(run_copy, "auto")
    assert resolve_resume(run_copy, "auto", fallback=True).name == PREVIOUS


def test_explicit_resume_path_is_checked_too(run_copy):
    newest = run_copy / "checkpoints" / NEWEST
    _truncate(SHARD0)(newest)
    with pytest.raises(CheckpointError, match=re.escape(str(newest / SHARD0))):
        resolve_resume(run_copy, str(newest))


@pytest.mark.parametrize(
    "change,differences",
    [
        (["model.depth=3"], ["encoder.depth: checkpoint 2, this run 3"]),
        (
            ["model.embed_dim=96"],
            ["encoder.embed_dim: checkpoint 48, this run 96", "predictor.embed_dim: checkpoint 48"],
        ),
        (["model.patch_size=8"], ["encoder.patch_size: checkpoint 4, this run 8"]),
    ],
)
def test_checkpoint_of_another_model_names_what_differs(run_copy, change, differences):
    cfg = load_config("fmnist_tiny", BASE + change)
    with pytest.raises(CheckpointError) as info:
        agree_on_resume(run_copy, "auto", False, cfg, rank=0)
    message = str(info.value)
    assert str(run_copy / "checkpoints" / NEWEST / "train_state.pt") in message
    assert "another model" in message
    for difference in differences:
        assert difference in message


def test_same_model_is_accepted(run_copy):
    cfg = load_config("fmnist_tiny", BASE)
    assert agree_on_resume(run_copy, "auto", False, cfg, rank=0).name == NEWEST


def test_zero0_checkpoint_cannot_change_stage_but_can_change_world_size(run_copy):
    # ZeRO 0 writes one full mp_rank_00 file and no optimizer shards: DeepSpeed's universal
    # conversion has nothing to read, so another stage is refused up front, with the way out.
    step = run_copy / "checkpoints" / NEWEST
    for shard in (step / "engine").glob("*_optim_states.pt"):
        shard.unlink()
    state = torch.load(step / "train_state.pt", weights_only=True)
    torch.save({**state, "zero_stage": 0}, step / "train_state.pt")
    single = DistEnv(0, 0, 1, "127.0.0.1", 29500, "single")
    with pytest.raises(CheckpointError, match=r"ZeRO 0.*cannot be resumed at ZeRO 1.*zero0"):
        prepare_resume(step, single, {"zero_optimization": {"stage": 1}})
    ds_config = {"zero_optimization": {"stage": 0}}
    prepare_resume(step, single, ds_config)  # 2 ranks -> 1 at ZeRO 0: loaded as it is
    assert "checkpoint" not in ds_config and not (step / "universal").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_every_rank_stops_with_the_same_message(run_copy):
    tmp = run_copy.parent.parent
    job = run_worker(tmp, "deeper", "base", resume="auto", overrides=("model.depth=3",))
    assert job.returncode != 0, job.describe()
    errors = {rank: job.ranks[rank]["error"] for rank in (0, 1)}
    assert errors[0] == errors[1]
    assert "train_state.pt is a checkpoint of another model" in errors[0]
    assert "encoder.depth: checkpoint 2, this run 3" in errors[0]


@pytest.mark.slow
@pytest.mark.distributed
def test_fallback_resumes_from_the_previous_checkpoint(run_copy):
    _truncate(SHARD0)(run_copy / "checkpoints" / NEWEST)
    tmp = run_copy.parent.parent
    overrides = ("schedule.max_steps=3", "checkpoint.every_steps=1")
    job = run_worker(tmp, "fallback", "base", resume="auto+fallback", overrides=overrides)
    assert job.returncode == 0, job.describe()
    assert "skipping unreadable checkpoint" in job.stdout and SHARD0 in job.stdout
    assert [job.ranks[r]["start_step"] for r in (0, 1)] == [1, 1]
    assert len(job.ranks[0]["losses"]) == 2
    # Step 2 was saved again; the damaged folder was renamed aside, not deleted.
    assert checkpoint_names(run_copy) == [NEWEST, "step_00000003"]  # keep_last=2
    (aside,) = (run_copy / "checkpoints").glob(f"{NEWEST}.superseded-*")
    assert (aside / SHARD0).stat().st_size < (
        run_copy / "checkpoints" / NEWEST / SHARD0
    ).stat().st_size
