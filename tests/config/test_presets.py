"""Shipped presets: each loads, validates and carries the paper/reference recipe."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from ijepa_ds.config import (
    gradient_accumulation_steps,
    list_presets,
    load_config,
    resolve_model_dims,
    validate_config,
    validate_paths,
)

IMAGENET_PRESETS = {
    # name: (encoder, patch, crop, predictor depth, epochs, warmup epochs)
    "vit_b16_in1k": ("vit_base", 16, 224, 6, 600, 40.0),
    "vit_l16_in1k": ("vit_large", 16, 224, 12, 600, 40.0),
    "vit_h14_in1k": ("vit_huge", 14, 224, 12, 300, 40.0),
    "vit_h16_448_in1k": ("vit_huge", 16, 448, 12, 300, 40.0),
    "vit_g16_in22k": ("vit_giant", 16, 224, 16, 44, 3.0),
}


def test_the_expected_presets_ship_inside_the_package():
    assert set(list_presets()) == {*IMAGENET_PRESETS, "fmnist_tiny"}
    folder = importlib.resources.files("ijepa_ds.config.presets")
    assert all(folder.joinpath(f"{n}.yaml").is_file() for n in list_presets())


@pytest.mark.parametrize("name", sorted({*IMAGENET_PRESETS, "fmnist_tiny"}))
def test_every_preset_loads_and_validates_at_its_world_size(name):
    cfg = load_config(name)
    world = cfg.data.global_batch_size // cfg.data.batch_size
    validate_config(cfg, world_size=world)
    assert gradient_accumulation_steps(cfg.data, world) == 1
    # Half the ranks accumulate two micro-batches for the same global batch.
    validate_config(cfg, world_size=world // 2)
    assert gradient_accumulation_steps(cfg.data, world // 2) == 2


@pytest.mark.parametrize("name", sorted(IMAGENET_PRESETS))
def test_imagenet_presets_follow_the_reference_recipe(name):
    cfg = load_config(name)
    encoder, patch, crop, pred_depth, epochs, warmup = IMAGENET_PRESETS[name]
    m, s, d, k = cfg.model, cfg.schedule, cfg.data, cfg.mask
    assert (m.name, m.patch_size, d.crop_size, m.pred_depth, m.pred_emb_dim) == (
        encoder, patch, crop, pred_depth, 384,
    )  # fmt: skip
    assert (s.epochs, s.warmup_epochs) == (epochs, warmup)
    assert (s.start_lr, s.lr, s.final_lr, s.weight_decay, s.final_weight_decay) == (
        2e-4, 1e-3, 1e-6, 0.04, 0.4,
    )  # fmt: skip
    assert (cfg.ema.momentum_start, cfg.ema.momentum_end) == (0.996, 1.0)
    assert (d.dataset, d.batch_size, d.global_batch_size) == ("image_folder", 128, 2048)
    assert d.crop_scale == (0.3, 1.0) and not d.use_horizontal_flip
    assert (cfg.optim.precision, cfg.optim.gradient_clipping) == ("bf16", 0.0)
    assert (k.min_keep, k.allow_overlap, k.num_pred_masks) == (10, False, 4)
    assert (k.pred_mask_scale, k.enc_mask_scale, k.aspect_ratio) == (
        (0.15, 0.2), (0.85, 1.0), (0.75, 1.5),
    )  # fmt: skip
    assert cfg.loss.kind == "smooth_l1"


def test_giant_uses_zero3_and_activation_checkpointing():
    cfg = load_config("vit_g16_in22k")
    assert cfg.deepspeed.config == "zero3"
    assert cfg.model.act_ckpt_encoder == 1 and cfg.model.act_ckpt_predictor == 1
    assert resolve_model_dims(cfg.model).mlp_ratio == pytest.approx(48 / 11)


def test_imagenet_presets_need_a_data_root():
    with pytest.raises(ValueError, match="data.root"):
        validate_paths(load_config("vit_b16_in1k"))


def test_fmnist_tiny_is_a_tiny_cpu_run():
    cfg = load_config("fmnist_tiny")
    d, m = cfg.data, cfg.model
    assert (d.dataset, d.crop_size, m.patch_size, m.in_chans) == ("fashion_mnist", 28, 4, 1)
    assert (d.normalize_mean, d.normalize_std) == ((0.2860,), (0.3530,))
    dims = resolve_model_dims(m)
    assert (dims.embed_dim, dims.depth, dims.num_heads, dims.pred_num_heads) == (192, 6, 3, 3)
    assert (m.pred_depth, m.pred_emb_dim) == (3, 96)
    assert (d.batch_size, d.global_batch_size, d.num_workers) == (64, 128, 0)
    assert (cfg.schedule.epochs, cfg.optim.precision, cfg.mask.min_keep) == (1, "fp32", 4)
    assert (cfg.logging.log_every, cfg.logging.image_every) == (10, 50)
    assert cfg.deepspeed.config == "zero1"
    validate_config(cfg, world_size=2)
    validate_config(cfg, world_size=1)  # one rank accumulates two micro-batches
    with pytest.raises(ValueError, match="world size 4"):
        validate_config(cfg, world_size=4)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist absent"
)
def test_fmnist_tiny_finds_the_debian_dataset():
    validate_paths(load_config("fmnist_tiny"))


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
