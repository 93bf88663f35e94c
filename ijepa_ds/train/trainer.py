"""Build every object a training run needs, one ``build_*`` function each."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ijepa_ds.backend.act_ckpt import apply_activation_checkpointing
from ijepa_ds.backend.ds_config import zero_stage
from ijepa_ds.backend.engine import Engine, build_engine
from ijepa_ds.config import (
    Config,
    ModelConfig,
    OptimConfig,
    gradient_accumulation_steps,
    resolved_global_batch,
)
from ijepa_ds.data import build_dataset_from_config, build_train_loader, build_train_transform
from ijepa_ds.distributed import DistEnv
from ijepa_ds.hostmem import pin_mmap_threshold
from ijepa_ds.masks import MaskCollator, build_mask_sampler_from_config, context_may_pad
from ijepa_ds.masks.collator import MaskSampler
from ijepa_ds.models.from_config import build_encoder_from_config, build_predictor_from_config
from ijepa_ds.schedules import Schedule
from ijepa_ds.train.student import IJEPAStudent
from ijepa_ds.train.target import TargetEncoder


@dataclass
class Trainer:
    """The assembled run: engine, target, data, schedules and step bookkeeping."""

    cfg: Config
    dist_env: DistEnv
    ds_config: dict
    engine: Engine
    target: TargetEncoder
    dataset: Dataset  # items (img [C, H, W], label, position)
    mask_sampler: MaskSampler
    schedule: Schedule
    global_batch_size: int
    accumulation: int
    iterations_per_epoch: int
    total_steps: int
    device: torch.device


def build_train_dataset(cfg: Config) -> Dataset:
    data = cfg.data
    transform = build_train_transform(
        data.crop_size,
        data.crop_scale,
        horizontal_flip=data.use_horizontal_flip,
        color_distortion_strength=data.color_jitter_strength if data.use_color_distortion else None,
        gaussian_blur=data.use_gaussian_blur,
        mean=data.normalize_mean,
        std=data.normalize_std,
    )
    return build_dataset_from_config(data, True, transform)


def build_schedule(cfg: Config, iterations_per_epoch: int) -> Schedule:
    s = cfg.schedule
    return Schedule.from_epochs(
        iterations_per_epoch,
        s.epochs,
        s.warmup_epochs,
        s.ipe_scale,
        start_lr=s.start_lr,
        lr=s.lr,
        final_lr=s.final_lr,
        weight_decay=s.weight_decay,
        final_weight_decay=s.final_weight_decay,
        momentum_start=cfg.ema.momentum_start,
        momentum_end=cfg.ema.momentum_end,
    )


def build_student(cfg: Config) -> IJEPAStudent:
    """Student with identical initial weights on every rank (seeded before construction)."""
    torch.manual_seed(cfg.seed)
    encoder = build_encoder_from_config(cfg)
    predictor = build_predictor_from_config(cfg)
    chunks = cfg.model.context_chunks if context_may_pad(cfg) else 1
    return IJEPAStudent(encoder, predictor, context_chunks=chunks)


def build_engine_and_target(
    student: IJEPAStudent, ds_config: dict, model_cfg: ModelConfig, optim_cfg: OptimConfig
) -> tuple[Engine, TargetEncoder]:
    """Target encoder + engine, in the order the traps demand.

    1. the target is copied from the fp32 encoder before the engine casts anything;
    2. activation checkpointing is applied to the student after the copy (the target runs
       under no_grad and never needs it);
    3. ``build_engine`` partitions and casts the student;
    4. the target is paired with the engine's parameters by name.
    """
    target = TargetEncoder(student.encoder, partitioned=zero_stage(ds_config) == 3)
    ckpt = (model_cfg.act_ckpt_impl, model_cfg.act_ckpt_cpu_offload)
    apply_activation_checkpointing(student.encoder.blocks, model_cfg.act_ckpt_encoder, *ckpt)
    apply_activation_checkpointing(
        student.predictor.predictor_blocks, model_cfg.act_ckpt_predictor, *ckpt
    )
    engine = build_engine(student, ds_config, optim_cfg.betas, optim_cfg.eps)
    target.bind(engine.module.encoder, engine.fp32_masters())
    return engine, target


def build_trainer(cfg: Config, dist_env: DistEnv, ds_config: dict) -> Trainer:
    """Everything but the data loader, which depends on the step to start from.

    CPU ranks pin glibc's mmap threshold first (``ijepa_ds.hostmem``): without it, a ZeRO-3
    rank's freed gather buffers stay in its heap and its RSS grows by gigabytes at ViT-H size.
    """
    if not torch.cuda.is_available():
        pin_mmap_threshold()
    world = dist_env.world_size
    gbs = resolved_global_batch(cfg.data, world)
    dataset = build_train_dataset(cfg)
    if len(dataset) < gbs:
        raise ValueError(
            f"data.global_batch_size={gbs} exceeds the {len(dataset)} images of {cfg.data.dataset}"
        )
    ipe = len(dataset) // gbs
    total = cfg.schedule.max_steps or cfg.schedule.epochs * ipe
    engine, target = build_engine_and_target(build_student(cfg), ds_config, cfg.model, cfg.optim)
    return Trainer(
        cfg=cfg,
        dist_env=dist_env,
        ds_config=ds_config,
        engine=engine,
        target=target,
        dataset=dataset,
        mask_sampler=build_mask_sampler_from_config(cfg, gbs),
        schedule=build_schedule(cfg, ipe),
        global_batch_size=gbs,
        accumulation=gradient_accumulation_steps(cfg.data, world),
        iterations_per_epoch=ipe,
        total_steps=total,
        device=engine.device,
    )


def build_loader(trainer: Trainer, start_step: int):
    cfg, env = trainer.cfg, trainer.dist_env
    return build_train_loader(
        trainer.dataset,
        MaskCollator(trainer.mask_sampler),
        trainer.global_batch_size,
        cfg.data.batch_size,
        env.rank,
        env.world_size,
        cfg.seed,
        start_step=start_step,
        max_steps=trainer.total_steps,
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory,
        persistent_workers=cfg.data.persistent_workers,
        prefetch_factor=cfg.data.prefetch_factor,
    )
