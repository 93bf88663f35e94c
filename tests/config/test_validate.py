"""Cross-field validation: every rule names the field, the value and the rule."""

from __future__ import annotations

import re
import sys

import pytest

from ijepa_ds.config import (
    Config,
    ConfigError,
    check_mask_settings,
    gradient_accumulation_steps,
    load_config,
    validate_config,
    validate_paths,
)

# (overrides on the defaults, field named in the error, fragment of the rule)
INVALID = [
    (["model.patch_size=15"], "model.patch_size=15", "must divide data.crop_size=224"),
    (["data.crop_size=100"], "model.patch_size=16", "must divide data.crop_size=100"),
    (["model.patch_size=0"], "model.patch_size=0", "must be > 0"),
    (["data.dataset=imagenet"], "data.dataset='imagenet'", "must be one of"),
    (["model.attn_impl=flash"], "model.attn_impl='flash'",
     "must be one of ['auto', 'sdpa', 'eager']"),
    (["loss.kind=smooth_l2"], "loss.kind='smooth_l2'", "did you mean 'smooth_l1'?"),
    (["optim.precision=fp16"], "optim.precision='fp16'", "must be one of ['bf16', 'fp32']"),
    (["mask.sampler=official"], "mask.sampler='official'", "must be one of"),
    (["model.name=vit_mega"], "model.name='vit_mega'", "must be one of"),
    (["mask.pred_mask_scale=[0.3, 0.2]"], "mask.pred_mask_scale=(0.3, 0.2)", "min <= max"),
    (["mask.enc_mask_scale=[0.0, 1.0]"], "mask.enc_mask_scale=(0.0, 1.0)", "0 < min"),
    (["mask.enc_mask_scale=[0.85, 1.2]"], "mask.enc_mask_scale=(0.85, 1.2)", "max <= 1"),
    (["mask.aspect_ratio=[0, 1.5]"], "mask.aspect_ratio=(0.0, 1.5)", "0 < min <= max"),
    (["mask.aspect_ratio=[2.0, 1.0]"], "mask.aspect_ratio=(2.0, 1.0)", "0 < min <= max"),
    (["mask.num_pred_masks=0"], "mask.num_pred_masks=0", "must be >= 1"),
    (["mask.min_keep=30"], "mask.min_keep=30", "smallest target block"),
    (["mask.enc_mask_scale=[0.2, 0.3]"], "mask.enc_mask_scale", "smallest context block"),
    (["data.crop_scale=[0.5, 0.3]"], "data.crop_scale=(0.5, 0.3)", "min <= max"),
    (["model.num_heads=7", "model.pred_num_heads=6"], "model.embed_dim=0",
     "width 768 must be divisible by the encoder heads 7"),
    (["model.pred_emb_dim=100"], "model.pred_emb_dim=100", "divisible by the predictor heads 12"),
    (["model.pred_num_heads=5"], "model.pred_emb_dim=384", "predictor heads 5"),
    (["data.batch_size=0"], "data.batch_size=0", "must be > 0"),
    (["data.global_batch_size=100"], "data.global_batch_size=100", "multiple of data.batch_size"),
    (["data.normalize_mean=[0.5]"], "data.normalize_mean=(0.5,)", "model.in_chans=3"),
    (["data.normalize_std=[0.2, 0.0, 0.2]"], "data.normalize_std=(0.2, 0.0, 0.2)", "> 0"),
    (["schedule.epochs=0", "schedule.warmup_epochs=0"], "schedule.epochs=0", "must be > 0"),
    (["schedule.warmup_epochs=400"], "schedule.warmup_epochs=400.0", "schedule.epochs=300"),
    (["schedule.final_lr=0.01"], "schedule.final_lr=0.01", "[0, schedule.lr=0.001]"),
    (["schedule.start_lr=-0.1"], "schedule.start_lr=-0.1", "must be >= 0"),
    (["schedule.weight_decay=-0.1"], "schedule.weight_decay=-0.1", "must be >= 0"),
    (["schedule.final_weight_decay=-1"], "schedule.final_weight_decay=-1.0", "must be >= 0"),
    (["ema.momentum_end=1.5"], "ema.momentum_end=1.5", "[0, 1]"),
    (["ema.momentum_start=0.999", "ema.momentum_end=0.99"], "ema.momentum_start=0.999", "<= ema"),
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage=4", "0, 1, 2 or 3"),
    (["model.act_ckpt_encoder=-1"], "model.act_ckpt_encoder=-1", "must be >= 0"),
    (["model.act_ckpt_predictor=-2"], "model.act_ckpt_predictor=-2", "must be >= 0"),
    (["model.act_ckpt_cpu_offload=true"], "model.act_ckpt_cpu_offload=True",
     "needs model.act_ckpt_encoder or model.act_ckpt_predictor > 0 (are 0 and 0)"),
    (["model.act_ckpt_impl=fairscal"], "model.act_ckpt_impl='fairscal'",
     "must be one of ['torch', 'deepspeed', 'fairscale'] (did you mean 'fairscale'?)"),
    (["deepspeed.offload_param=true", "deepspeed.zero_stage=2"], "deepspeed.offload_param=True",
     "ZeRO stage 3"),
    (["deepspeed.offload_optimizer=true", "deepspeed.zero_stage=0"],
     "deepspeed.offload_optimizer=True", "ZeRO stage >= 1"),
    (["optim.betas=[0.9, 1.0]"], "optim.betas=(0.9, 1.0)", "[0, 1)"),
    (["optim.eps=0"], "optim.eps=0.0", "> 0"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last=0", ">= 1"),
    (["logging.log_every=0"], "logging.log_every=0", ">= 1"),
    (["eval.knn_temperature=0"], "eval.knn_temperature=0.0", "> 0"),
    (["eval.low_shot_fractions=[0.0]"], "eval.low_shot_fractions=(0.0,)", "(0, 1]"),
    (["eval.linear_lrs=[]"], "eval.linear_lrs=()", "non-empty"),
    (["eval.best_metric=knn"], "eval.best_metric='knn'", "eval.health_every_steps > 0"),
    (["seed=-1"], "seed=-1", "[0, 2**32)"),
    (["model.drop_path_rate=1.0"], "model.drop_path_rate=1.0", "[0, 1)"),
    (["logging.wandb_mode=ofline"], "logging.wandb_mode='ofline'",
     "must be one of ['online', 'offline', 'disabled'] (did you mean 'offline'?)"),
    (["logging.wandb=true", "logging.wandb_project="], "logging.wandb_project=''",
     "must not be empty with logging.wandb=true"),
    (["logging.wandb_tags=[ok, '']"], "logging.wandb_tags=('ok', '')", "1 to 64 characters"),
    (["mask.context_policy=min"], "mask.context_policy='min'",
     "must be one of ['global_min', 'group_min', 'keep_all']"),
    (["mask.group_size=0"], "mask.group_size=0", "must be >= 1"),
    (["data.dataset=synthetic", "data.synthetic_load_s=-0.1"], "data.synthetic_load_s=-0.1",
     "must be >= 0"),
    (["data.synthetic_load_s=0.1"], "data.synthetic_load_s=0.1",
     "applies to data.dataset=synthetic only, not 'image_folder'"),
    (["data.global_batch_size=384", "mask.group_size=256"], "mask.group_size=256",
     "must divide the global batch 384 (data.global_batch_size=384)"),
]  # fmt: skip


@pytest.mark.parametrize("overrides,field,rule", INVALID, ids=[" ".join(c[0]) for c in INVALID])
def test_invalid_config_is_rejected_naming_field_value_and_rule(overrides, field, rule):
    cfg = load_config(None, overrides)
    with pytest.raises(ValueError, match=re.escape(field) + ".*" + re.escape(rule)) as exc:
        validate_config(cfg)
    assert "\n" not in str(exc.value), "each case should break exactly one rule"


def test_wandb_without_the_package_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    with pytest.raises(ConfigError, match=r"logging.wandb=True: needs the wandb package "
                       r"\(pip install 'ijepa-ds\[wandb\]'\)"):  # fmt: skip
        validate_config(load_config(None, ["logging.wandb=true"]))
    validate_config(load_config(None, ["logging.wandb=false"]))  # off: the package is not needed


def test_the_defaults_and_valid_edge_values_pass():
    validate_config(Config())
    validate_config(
        load_config(
            None,
            [
                "schedule.warmup_epochs=300",
                "schedule.final_lr=1e-3",
                "ema.momentum_start=1.0",
                "mask.allow_overlap=true",
                "model.act_ckpt_impl=deepspeed",
                "model.act_ckpt_cpu_offload=true",
                "model.act_ckpt_predictor=1",
                "deepspeed.offload_param=true",  # zero_stage -1: the JSON decides
                "eval.best_metric=knn",
                "eval.health_every_steps=100",
            ],
        )
    )


@pytest.mark.parametrize("attn_impl", ["auto", "sdpa", "eager"])
def test_every_attention_choice_is_valid_and_auto_is_the_default(attn_impl):
    assert Config().model.attn_impl == "auto"
    cfg = load_config(None, [f"model.attn_impl={attn_impl}", "model.predictor_prune_last=false"])
    validate_config(cfg)
    assert cfg.model.attn_impl == attn_impl and cfg.model.predictor_prune_last is False
    assert Config().model.predictor_prune_last is True


def test_all_broken_rules_are_reported_together():
    cfg = load_config(None, ["data.batch_size=0", "schedule.lr=-1", "loss.kind=l3"])
    with pytest.raises(ValueError) as exc:
        validate_config(cfg)
    expected = [
        "data.batch_size=0",
        "schedule.lr=-1.0",
        "schedule.final_lr=1e-06",
        "loss.kind='l3'",
    ]
    assert str(exc.value).count("\n  - ") == len(expected)
    for field in expected:
        assert field in str(exc.value)


def test_world_size_must_split_the_global_batch():
    cfg = load_config(None, ["data.global_batch_size=2048"])
    validate_config(cfg)  # without a world size only batch_size must divide it
    validate_config(cfg, world_size=16)
    validate_config(cfg, world_size=8)
    pattern = r"data\.global_batch_size=2048.*data\.batch_size=128.*world size 3"
    with pytest.raises(ValueError, match=pattern):
        validate_config(cfg, world_size=3)
    with pytest.raises(ValueError, match="world size 32"):
        validate_config(cfg, world_size=32)  # 128 x 32 = 4096 > 2048


def test_mask_groups_must_tile_the_step():
    # global batch from the world size: 3 ranks x 128 = 384 is not a multiple of 256
    cfg = load_config(None, ["mask.group_size=256"])
    validate_config(cfg)  # unknown global batch: nothing to check yet
    validate_config(cfg, world_size=4)  # 512
    validate_config(cfg, world_size=1)  # 128: a group larger than the step is the step
    pattern = r"mask\.group_size=256.*global batch 384 \(data\.batch_size=128 x world size 3\)"
    with pytest.raises(ValueError, match=pattern):
        validate_config(cfg, world_size=3)
    for other in ("mask.context_policy=keep_all", "mask.sampler=reference"):
        validate_config(load_config(None, ["mask.group_size=256", other]), world_size=3)
    assert Config().mask.context_policy == "group_min" and Config().mask.group_size == 128


def test_gradient_accumulation_steps():
    data = load_config(None, ["data.global_batch_size=2048"]).data
    assert gradient_accumulation_steps(data, 16) == 1
    assert gradient_accumulation_steps(data, 4) == 4
    assert gradient_accumulation_steps(Config().data, 7) == 1  # 0 = no accumulation
    with pytest.raises(ValueError, match="world size 0"):
        gradient_accumulation_steps(data, 0)


def test_validate_config_never_touches_the_filesystem(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path / 'missing'}"])
    validate_config(cfg)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing"))):
        validate_paths(cfg)


def test_validate_paths_per_dataset(tmp_path):
    validate_paths(load_config(None, ["data.dataset=synthetic", "data.root=/nowhere"]))
    validate_paths(load_config(None, [f"data.root={tmp_path}"]))
    with pytest.raises(ValueError, match="data.root=''.*image_folder"):
        validate_paths(load_config(None, ["data.dataset=image_folder"]))
    missing = tmp_path / "fmnist"
    with pytest.raises(ValueError, match=re.escape(f"dataset folder {missing} does not exist")):
        validate_paths(load_config(None, ["data.dataset=fashion_mnist", f"data.root={missing}"]))


def test_mask_settings_on_small_grids():
    ref = dict(enc_scale=(0.85, 1.0), pred_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), nenc=1)
    # 7x7 with min_keep 4 (the fmnist_tiny preset) is feasible for both samplers.
    ours = dict(npred=4, allow_overlap=False, **ref)
    assert check_mask_settings("step_seeded", 7, 7, min_keep=4, **ours) == []
    # 4x4 grid at the reference min_keep 10: the reference sampler would loop forever.
    for sampler in ("step_seeded", "reference"):
        errors = check_mask_settings(sampler, 4, 4, min_keep=10, **ours)
        assert len(errors) == 1 and "mask.min_keep=10" in errors[0], sampler


@pytest.mark.parametrize("impl", ["torch", "deepspeed", "fairscale"])
def test_every_checkpointing_implementation_may_offload(impl):
    overrides = ["model.act_ckpt_encoder=2", "model.act_ckpt_cpu_offload=true"]
    validate_config(load_config(None, [f"model.act_ckpt_impl={impl}", *overrides]))


def test_fairscale_without_the_package_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fairscale", None)  # as if not installed: find_spec is None
    cfg = load_config(None, ["model.act_ckpt_impl=fairscale", "model.act_ckpt_encoder=1"])
    with pytest.raises(
        ConfigError,
        match=r"model.act_ckpt_impl='fairscale': needs the fairscale package, which is not "
        r"installed \(pip install '\.\[fairscale\]'",
    ):
        validate_config(cfg)
    validate_config(load_config(None, ["model.act_ckpt_encoder=1"]))  # torch: not needed


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
