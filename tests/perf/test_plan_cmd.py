"""``ijepa-ds plan``: a known fit, a known non-fit with its remedies, errors named."""

from __future__ import annotations

import json

import pytest

from ijepa_ds.cli.main import build_parser
from ijepa_ds.cli.plan_cmd import configure_plan
from ijepa_ds.config import ConfigError, load_config
from ijepa_ds.perf.memory import GIB
from ijepa_ds.perf.plan import expected_tokens, plan


def run_plan(capsys, *argv: str) -> tuple[int, str]:
    parser = build_parser([("plan", "memory planner", configure_plan)])
    args = parser.parse_args(["plan", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_vit_h14_recipe_fits_on_16_80gb_gpus(capsys):
    code, out = run_plan(capsys, "--config", "vit_h14_in1k", "--world-size=16", "--gpu-mem=80")
    assert code == 0
    assert "16 CUDA ranks x batch 128 x accumulation 1 | ZeRO-1 | bf16" in out
    for row in ("parameters", "Adam moments", "EMA target encoder", "activations: predictor"):
        assert row in out
    assert "FITS: modelled peak" in out
    assert "FLOPs per image" in out


def test_vit_g16_at_zero0_does_not_fit_16gb_and_names_remedies(capsys):
    code, out = run_plan(
        capsys, "--config", "vit_g16_in22k", "--world-size", "8", "--gpu-mem", "16",
        "--zero-stage", "0",
    )  # fmt: skip
    assert code == 1
    assert "ZeRO-0" in out
    assert "DOES NOT FIT" in out and "largest terms: Adam moments" in out
    assert "would fit with deepspeed.config=zero3" in out


def test_overrides_and_shorthands_reach_the_model(capsys):
    code, out = run_plan(
        capsys, "--config", "vit_b16_in1k", "data.global_batch_size=1024", "--world-size", "8",
        "--gpu-mem", "24", "--batch", "32", "--act-ckpt", "2", "--image-size", "192",
    )  # fmt: skip
    assert code == 0
    assert "8 CUDA ranks x batch 32 x accumulation 4" in out
    assert "act ckpt encoder 2 / predictor 2" in out
    assert "N=144" in out  # (192 / 16)^2 patches


def test_config_errors_are_named():
    parser = build_parser([("plan", "memory planner", configure_plan)])
    args = parser.parse_args(
        ["plan", "--config", "vit_b16_in1k", "model.dpeth=3", "--world-size=8", "--gpu-mem=80"]
    )
    with pytest.raises(ConfigError, match="model.dpeth"):
        args.func(args)
    args = parser.parse_args(
        ["plan", "--config", "vit_b16_in1k", "--world-size", "3", "--gpu-mem", "80"]
    )
    with pytest.raises(ConfigError, match="must be a multiple of data.batch_size"):
        args.func(args)  # global batch 2048 over 3 ranks x 128


def test_plan_result_and_remedies():
    cfg = load_config("vit_l16_in1k")
    roomy = plan(cfg, world_size=16, gpu_mem_gib=80)
    assert roomy.fits and not roomy.alternatives
    tight_gib = roomy.estimate.peak / GIB * 0.8
    tight = plan(cfg, world_size=16, gpu_mem_gib=tight_gib, headroom=0.0)
    assert not tight.fits
    labels = [label for label, _ in tight.alternatives]
    assert labels and all(peak <= tight_gib * GIB for _, peak in tight.alternatives)
    assert "model.act_ckpt_encoder=1 model.act_ckpt_predictor=1" in labels


def test_expected_tokens_follow_the_mask_scales():
    cfg = load_config("vit_h14_in1k")  # 16 x 16 grid, targets 15-20% of it
    k_enc, k_pred = expected_tokens(cfg, global_batch=2048, steps=8)
    assert 0.15 * 256 <= k_pred <= 0.2 * 256 * 1.1
    assert 0 < k_enc < 256 - k_pred


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_planner_reads_the_buckets_of_the_deepspeed_json(tmp_path, stage):
    shipped = plan(load_config("vit_h14_in1k", [f"deepspeed.config=zero{stage}"]), 16, 80)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    default = plan(load_config("vit_h14_in1k", [f"deepspeed.config={bare}"]), 16, 80)
    assert shipped.engine.reduce_bucket_size == 50_000_000
    assert default.engine.reduce_bucket_size == 500_000_000  # DeepSpeed's own default
    lp = 2  # bf16
    if stage < 3:  # the bucket is allocated during the backward
        saved = default.estimate.bwd_transient - shipped.estimate.bwd_transient
        assert saved == lp * (500_000_000 - 50_000_000)
    else:  # prefetching: up to max_live_parameters (1e9 both) stay gathered, the whole model
        whole = shipped.estimate.params * 16  # lp (P + F) / W at ZeRO-3
        assert shipped.estimate.gathered == default.estimate.gathered == whole
        assert shipped.estimate.grad_buffers < default.estimate.grad_buffers


@pytest.mark.parametrize(
    ("knobs", "kept"),
    [
        # Prefetching: up to max_live, when that is more than the reuse distance keeps.
        (
            {"stage3_max_live_parameters": 100_000_000, "stage3_max_reuse_distance": 100_000_000},
            100_000_000,
        ),
        (
            {"stage3_max_live_parameters": 10_000_000, "stage3_max_reuse_distance": 100_000_000},
            50_000_000,
        ),
        # No prefetching: about half the reuse distance, the parameters reused soonest.
        ({"stage3_prefetch_bucket_size": 0, "stage3_max_reuse_distance": 60_000_000}, 30_000_000),
    ],
)
def test_zero3_gathered_parameters_follow_the_live_and_reuse_bounds(tmp_path, knobs, kept):
    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, **knobs}}))
    result = plan(load_config("vit_h14_in1k", [f"deepspeed.config={ds}"]), 16, 80)
    assert result.estimate.gathered == 2 * kept  # bf16


def test_cpu_plan_names_the_runtime_and_the_save(capsys):
    argv = ("--config", "vit_h14_in1k", "--world-size=2", "--gpu-mem=12", "--zero-stage=3")
    _, gpu = run_plan(capsys, *argv, "--act-ckpt=1", "--batch=1")
    code, cpu = run_plan(capsys, *argv, "--act-ckpt=1", "--batch=1", "--device=cpu")
    assert "2 CUDA ranks" in gpu and "host memory at a save (rank 0)" in gpu
    assert "2 CPU ranks" in cpu and "process runtime (CPU ranks)" in cpu
    assert "save " in cpu.split("peak (")[1]  # the save is one of the CPU phases
    assert code in (0, 1)
