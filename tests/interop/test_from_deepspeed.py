"""Real DeepSpeed checkpoints (2 gloo ranks, ZeRO 0-3) -> consolidated: what the engine held.

Run as a script (under torchrun, see `write_deepspeed_runs`) this file is also the worker:
for each (ZeRO stage, precision) it trains 2 steps of a tiny model, saves a checkpoint with
the trainer's own saver and, next to it, the engine's own fp32 master weights and AdamW
moments gathered with DeepSpeed's APIs at save time (`expected.pt`). The run is the ZeRO
equivalence test's tiny setup (`OVERRIDES` of `tests/train/equivalence_worker.py`) with an MLP
ratio giving fc1 195 outputs, an odd size, so ZeRO-3 pads and ZeRO 1/2 align across 2 ranks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_ok, cpu_env, torchrun
from tests.interop.helpers import assert_same
from tests.train.equivalence_worker import OVERRIDES as EQUIVALENCE_OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
RUNS = ("0:bf16", "1:fp32", "2:bf16", "3:bf16")
STEPS = 2
OVERRIDES = [*EQUIVALENCE_OVERRIDES, "model.mlp_ratio=4.0625", f"schedule.max_steps={STEPS}"]


def write_deepspeed_runs(root: Path, runs: tuple[str, ...] = RUNS, nproc: int = 2) -> dict:
    """Run folders `root/zero{stage}_{precision}` written by the worker; {run: folder}.

    nproc 1 runs the worker as a plain process with the launcher variables set (no torchrun
    start-up cost); more ranks go through torchrun.
    """
    if nproc == 1:
        from ijepa_ds.distributed import free_port

        env = cpu_env(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
        cmd = [sys.executable, str(Path(__file__)), str(root), *runs]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    else:
        proc = torchrun(nproc, Path(__file__), str(root), *runs, timeout=300)
    assert_ok(proc)
    return {run: root / "zero{}_{}".format(*run.split(":")) for run in runs}


# ----------------------------------------------------------------------------- worker side
def _engine_values(engine, stage: int) -> dict:
    """fp32 masters and AdamW moments of every trainable student parameter, by name."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    names = {id(p): n for n, p in engine.module.named_parameters()}
    out: dict = {"weights": {}, "moments": {}, "module": {}}
    opt = engine.optimizer
    if stage == 0:  # no ZeRO mapping: DeepSpeed's bf16 wrapper pairs params with fp32 masters
        pairs = (
            [
                (lp, hp, opt.optimizer.state[hp])
                for lg, hg in zip(opt.fp16_groups, opt.fp32_groups)
                for lp, hp in zip(lg, hg)
            ]
            if hasattr(opt, "fp32_groups")
            else [(p, p, opt.state[p]) for g in opt.param_groups for p in g["params"]]
        )
        for lp, hp, st in pairs:
            out["weights"][names[id(lp)]] = hp.detach().float().clone()
            out["moments"][names[id(lp)]] = {
                k: st[k].clone() for k in ("exp_avg", "exp_avg_sq", "step")
            }
    else:
        if stage in (1, 2):
            # DeepSpeed 0.19.8 links parameters to their optimizer-state fragments after the
            # first group's first step, when the other groups have no state yet, and never
            # again: relink, or safe_get_full_optimizer_state fails for groups 1-3.
            opt._hp_optimizer_states_linked = False
            opt._lazy_init_hp_params_optimizer_state()
        for name, p in engine.module.named_parameters():
            if p.requires_grad:
                out["weights"][name] = safe_get_full_fp32_param(p).clone()
                out["moments"][name] = {
                    k: safe_get_full_optimizer_state(p, k).clone()
                    for k in ("exp_avg", "exp_avg_sq")
                }
    return out


def _gathered(module: torch.nn.Module) -> dict:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {n: p.detach().clone() for n, p in module.state_dict().items()}


def _save_run(env, run: str, root: Path) -> None:
    from ijepa_ds.backend.ds_config import build_ds_config
    from ijepa_ds.checkpoint.saver import save_checkpoint
    from ijepa_ds.config import dump_yaml, load_config
    from ijepa_ds.train.loop import train_loop
    from ijepa_ds.train.trainer import build_trainer

    stage, precision = run.split(":")
    cfg = load_config(
        "fmnist_tiny", OVERRIDES + [f"deepspeed.config=zero{stage}", f"optim.precision={precision}"]
    )
    trainer = build_trainer(cfg, env, build_ds_config(cfg, env.world_size))
    train_loop(trainer, 0)
    run_dir = root / f"zero{stage}_{precision}"
    if env.rank == 0:
        run_dir.mkdir(parents=True)
        dump_yaml(cfg, run_dir / "config.yaml")
    save_checkpoint(trainer, run_dir, STEPS, "test")  # the trainer's own saver, all ranks
    expected = _engine_values(trainer.engine, int(stage))
    expected["module"] = _gathered(trainer.engine.module)
    expected["target"] = _gathered(trainer.target.module)
    if env.rank == 0:
        torch.save(expected, run_dir / "expected.pt")
    torch.distributed.barrier()


def _worker(root: str, runs: list[str]) -> None:
    from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
    from ijepa_ds.distributed import detect_dist_env

    env = detect_dist_env()
    init_distributed(env)
    for run in runs:
        _save_run(env, run, Path(root))
    shutdown_distributed()


# ------------------------------------------------------------------------------ test side
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    return write_deepspeed_runs(tmp_path_factory.mktemp("ds_runs"))


@pytest.fixture(scope="module")
def converted(runs) -> dict:
    from ijepa_ds.interop.from_deepspeed import consolidate_deepspeed

    return {run: consolidate_deepspeed(folder, progress=None) for run, folder in runs.items()}


def _expected(runs, run) -> dict:
    return torch.load(runs[run] / "expected.pt", weights_only=True)


def _student(consolidated: dict, name: str) -> torch.Tensor:
    part, key = name.split(".", 1)
    return consolidated[part][key]


@pytest.mark.parametrize("run", RUNS)
def test_student_weights_are_the_engine_fp32_masters(runs, converted, run):
    expected, got = _expected(runs, run), converted[run]
    assert set(expected["weights"]) | {"encoder.pos_embed", "predictor.predictor_pos_embed"} == {
        f"{p}.{k}" for p in ("encoder", "predictor") for k in got[p]
    }
    for name, master in expected["weights"].items():
        tensor = _student(got, name)
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, master), name
        # The engine's (gathered) module weight is this master in the run's precision.
        assert torch.equal(tensor.to(expected["module"][name].dtype), expected["module"][name])


@pytest.mark.parametrize("run", RUNS)
def test_position_tables_are_the_regenerated_sincos(converted, run):
    from ijepa_ds.models import get_2d_sincos_pos_embed

    got = converted[run]
    assert torch.equal(got["encoder"]["pos_embed"], get_2d_sincos_pos_embed(48, 8)[None])
    assert torch.equal(got["target_encoder"]["pos_embed"], get_2d_sincos_pos_embed(48, 8)[None])
    assert torch.equal(
        got["predictor"]["predictor_pos_embed"], get_2d_sincos_pos_embed(24, 8)[None]
    )


@pytest.mark.parametrize("run", RUNS)
def test_target_encoder_is_what_was_saved(runs, converted, run):
    saved = _expected(runs, run)["target"]
    got = converted[run]["target_encoder"]
    assert list(got) == list(saved)
    for key, value in saved.items():
        assert got[key].dtype == torch.float32 and torch.equal(got[key], value), key
    # EMA after 2 steps: the target moved away from the student.
    assert not torch.equal(
        got["blocks.0.attn.qkv.weight"], converted[run]["encoder"]["blocks.0.attn.qkv.weight"]
    )


@pytest.mark.parametrize("run", RUNS)
def test_optimizer_moments_and_groups(runs, converted, run):
    expected, opt = _expected(runs, run), converted[run]["optimizer"]
    assert set(opt["state"]) == set(expected["moments"])
    for name, moments in expected["moments"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt["state"][name][key], moments[key]), (name, key)
        # DeepSpeed's bf16 wrapper at ZeRO-0 takes one zero-gradient AdamW step at start-up.
        step = moments["step"].item() if "step" in moments else STEPS
        assert opt["state"][name]["step"].item() == step and step in (STEPS, STEPS + 1)
    groups = opt["param_groups"]
    assert [len(g["params"]) for g in groups] == [9, 7, 19, 12]
    assert groups[0]["params"][0] == "encoder.patch_embed.proj.weight"
    assert groups[1]["params"][:2] == ["predictor.mask_token", "predictor.predictor_embed.weight"]
    assert [g.get("WD_exclude", False) for g in groups] == [False, False, True, True]
    assert groups[2]["weight_decay"] == 0.0 and groups[0]["weight_decay"] > 0.04


@pytest.mark.parametrize("run", ["1:fp32", "3:bf16"])
def test_reference_round_trip_is_lossless(tmp_path, converted, run):
    from ijepa_ds.interop.reference_export import from_reference, save_reference, to_reference

    ours = converted[run]
    path = save_reference(to_reference(ours), tmp_path / "run.pth.tar")
    back = from_reference(path, num_heads=3, pred_num_heads=3)
    for key in (
        "encoder",
        "predictor",
        "target_encoder",
        "optimizer",
        "encoder_kwargs",
        "predictor_kwargs",
        "step",
        "epoch",
    ):
        assert_same(ours[key], back[key], key)


def test_metadata_and_architecture(runs, converted):
    got = converted["3:bf16"]
    assert got["step"] == STEPS and got["epoch"] == 0
    assert got["metadata"]["world_size"] == 2 and got["metadata"]["zero_stage"] == 3
    assert (
        got["encoder_kwargs"]["mlp_ratio"] == 4.0625 and got["predictor_kwargs"]["num_heads"] == 3
    )
    assert got["config"]["model"]["embed_dim"] == 48


def test_built_models_run(converted):
    from ijepa_ds.interop.consolidated import build_models

    encoder, predictor, target = build_models(converted["1:fp32"])
    imgs = torch.randn(2, 3, 32, 32)
    assert encoder(imgs).shape == (2, 64, 48) and target(imgs).shape == (2, 64, 48)


def test_step_folder_and_run_folder_agree(runs, converted):
    from ijepa_ds.interop.from_deepspeed import consolidate_deepspeed

    step_dir = runs["1:fp32"] / "checkpoints" / f"step_{STEPS:08d}"
    got = consolidate_deepspeed(step_dir, with_optimizer=False, progress=None)
    assert got["optimizer"] is None
    assert torch.equal(got["encoder"]["norm.weight"], converted["1:fp32"]["encoder"]["norm.weight"])


@pytest.mark.parametrize("run", ["1:fp32", "3:bf16"])
def test_target_encoder_alone_reads_no_engine_shard(tmp_path, runs, converted, run):
    import shutil

    from ijepa_ds.interop.from_deepspeed import deepspeed_target_encoder

    run_dir = shutil.copytree(runs[run], tmp_path / "run")
    for shard in (run_dir / "checkpoints").rglob("engine/**/*.pt"):
        shard.write_bytes(b"")  # a consolidation fails on these; a timm export never reads them
    got, full = deepspeed_target_encoder(run_dir), converted[run]
    assert (got["step"], got["epoch"]) == (full["step"], full["epoch"])
    assert got["encoder_kwargs"] == full["encoder_kwargs"]
    assert list(got["target_encoder"]) == list(full["target_encoder"])
    assert_same(got["target_encoder"], full["target_encoder"])


def test_progress_lines_name_the_files(runs):
    from ijepa_ds.interop.from_deepspeed import consolidate_deepspeed

    lines: list[str] = []
    consolidate_deepspeed(runs["3:bf16"], with_optimizer=False, progress=lines.append)
    assert any("optim_states.pt" in line and "MiB" in line for line in lines)
    assert lines[-1].startswith("student weights:") and lines[-1].endswith("tensors")


def test_errors_name_the_folder(tmp_path, runs):
    from ijepa_ds.interop.from_deepspeed import consolidate_deepspeed

    with pytest.raises(ValueError, match="expected a run folder"):
        consolidate_deepspeed(tmp_path, progress=None)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="no checkpoint yet"):
        consolidate_deepspeed(tmp_path, progress=None)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
