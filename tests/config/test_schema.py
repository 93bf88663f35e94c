"""The config schema: section/field names the trainer relies on, docs, defaults, model dims."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from ijepa_ds.config import Config, ModelConfig, iter_fields, resolve_data_root, resolve_model_dims
from ijepa_ds.config.schema import ENCODER_DIMS, DataConfig

EXPECTED_FIELDS = {
    "data": "dataset root crop_size crop_scale use_horizontal_flip use_color_distortion "
    "color_jitter_strength use_gaussian_blur normalize_mean normalize_std batch_size "
    "global_batch_size num_workers pin_memory persistent_workers prefetch_factor "
    "synthetic_size synthetic_classes synthetic_load_s",
    "mask": "sampler num_enc_masks num_pred_masks enc_mask_scale pred_mask_scale aspect_ratio "
    "min_keep allow_overlap context_policy group_size",
    "model": "name patch_size in_chans embed_dim depth num_heads mlp_ratio qkv_bias "
    "drop_path_rate norm_eps init_std rescale_init attn_impl mask_gather context_chunks "
    "pred_depth pred_emb_dim pred_num_heads predictor_prune_last act_ckpt_encoder "
    "act_ckpt_predictor act_ckpt_impl act_ckpt_cpu_offload",
    "optim": "betas eps gradient_clipping precision",
    "schedule": "epochs warmup_epochs start_lr lr final_lr weight_decay final_weight_decay "
    "ipe_scale max_steps",
    "ema": "momentum_start momentum_end",
    "loss": "kind on_nonfinite",
    "logging": "output_dir run_name log_every tensorboard image_every jsonl wandb wandb_project "
    "wandb_entity wandb_mode wandb_tags",
    "checkpoint": "every_steps every_minutes keep_last milestone_every save_at_end",
    "deepspeed": "config zero_stage offload_optimizer offload_param",
    "eval": "knn_k knn_temperature linear_lrs linear_wds linear_epochs feature_pool batch_size "
    "val_every_epochs low_shot_fractions pretrain_val_every_epochs pretrain_val_samples "
    "health_every_steps health_train_samples health_val_samples collapse_std_threshold "
    "best_metric",
}


def test_sections_and_field_names_are_the_contract():
    top = [f.name for f in dataclasses.fields(Config)]
    assert top == ["seed", *EXPECTED_FIELDS]
    cfg = Config()
    for section, names in EXPECTED_FIELDS.items():
        assert [f.name for f in dataclasses.fields(getattr(cfg, section))] == names.split()


def _all_fields(cls: type = Config):
    for f in dataclasses.fields(cls):
        yield cls, f
        ftype = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(ftype):
            yield from _all_fields(ftype)


def test_every_field_and_section_has_a_help_text():
    missing = [f"{cls.__name__}.{f.name}" for cls, f in _all_fields() if not f.metadata.get("help")]
    assert missing == []


def test_iter_fields_lists_every_leaf_once_with_its_default():
    infos = list(iter_fields())
    paths = [i.path for i in infos]
    assert (
        len(paths) == len(set(paths)) == 1 + sum(len(v.split()) for v in EXPECTED_FIELDS.values())
    )
    by_path = {i.path: i for i in infos}
    assert by_path["data.crop_scale"].default == (0.3, 1.0)
    assert by_path["data.crop_scale"].type == tuple[float, float]
    assert by_path["seed"].default == 0


def test_defaults_follow_the_reference_recipe():
    cfg = Config()
    assert cfg.data.crop_scale == (0.3, 1.0)
    assert not (cfg.data.use_horizontal_flip or cfg.data.use_color_distortion)
    m = cfg.mask
    assert (m.num_enc_masks, m.num_pred_masks, m.min_keep, m.allow_overlap) == (1, 4, 10, False)
    assert (m.enc_mask_scale, m.pred_mask_scale, m.aspect_ratio) == (
        (0.85, 1.0),
        (0.15, 0.2),
        (0.75, 1.5),
    )
    assert cfg.optim.gradient_clipping == 0.0 and cfg.optim.precision == "bf16"
    s = cfg.schedule
    assert (s.start_lr, s.lr, s.final_lr) == (2e-4, 1e-3, 1e-6)
    assert (s.weight_decay, s.final_weight_decay) == (0.04, 0.4)
    assert (cfg.ema.momentum_start, cfg.ema.momentum_end) == (0.996, 1.0)
    assert cfg.loss.kind == "smooth_l1"
    assert (cfg.model.norm_eps, cfg.model.init_std, cfg.model.qkv_bias) == (1e-6, 0.02, True)
    assert cfg.deepspeed.config == "zero1" and cfg.deepspeed.zero_stage == -1


def test_sections_are_independent_instances():
    a, b = Config(), Config()
    a.data.batch_size = 1
    assert b.data.batch_size == 128


@pytest.mark.parametrize(
    "name,dims",
    [
        ("vit_tiny", (192, 12, 3)),
        ("vit_small", (384, 12, 6)),
        ("vit_base", (768, 12, 12)),
        ("vit_large", (1024, 24, 16)),
        ("vit_huge", (1280, 32, 16)),
        ("vit_giant", (1408, 40, 16)),
    ],
)
def test_model_dims_come_from_the_preset_when_zero(name, dims):
    d = resolve_model_dims(ModelConfig(name=name))
    assert (d.embed_dim, d.depth, d.num_heads) == dims
    assert d.mlp_ratio == (48 / 11 if name == "vit_giant" else 4.0)
    assert d.pred_num_heads == dims[2]  # the reference predictor uses the encoder's heads


def test_explicit_model_dims_override_the_preset():
    d = resolve_model_dims(
        ModelConfig(
            name="vit_tiny", embed_dim=96, depth=3, num_heads=2, mlp_ratio=2.0, pred_num_heads=4
        )
    )
    assert (d.embed_dim, d.depth, d.num_heads, d.mlp_ratio, d.pred_num_heads) == (96, 3, 2, 2.0, 4)


def test_unknown_encoder_preset_is_a_value_error():
    with pytest.raises(ValueError, match="model.name"):
        resolve_model_dims(ModelConfig(name="vit_mega"))


def test_encoder_table_agrees_with_the_model_package():
    from ijepa_ds.models import ENCODER_PRESETS

    for name, (dim, depth, heads, ratio) in ENCODER_DIMS.items():
        preset = ENCODER_PRESETS[name.removeprefix("vit_")]
        assert (preset["embed_dim"], preset["depth"], preset["num_heads"]) == (dim, depth, heads)
        assert preset.get("mlp_ratio", 4.0) == pytest.approx(ratio)


def test_data_root_defaults_per_dataset():
    assert (
        resolve_data_root(DataConfig(dataset="fashion_mnist"))
        == "/usr/share/datasets/fashion-mnist"
    )
    assert resolve_data_root(DataConfig(dataset="fashion_mnist", root="/x")) == "/x"
    assert resolve_data_root(DataConfig(dataset="image_folder")) == ""


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
