"""``deepspeed.initialize`` around the student, with the four reference AdamW groups."""

from __future__ import annotations

from typing import Any

import torch

from ijepa_ds.train.act_ckpt import apply_activation_checkpointing
from ijepa_ds.train.ds_config import zero_stage
from ijepa_ds.train.param_groups import build_param_groups
from ijepa_ds.train.student import IJEPAStudent
from ijepa_ds.train.target import TargetEncoder


def build_optimizer(student: IJEPAStudent, betas, eps: float) -> torch.optim.AdamW:
    """torch AdamW over the four reference groups.

    A torch optimizer instance (rather than DeepSpeed's ``{"type": "AdamW"}``) builds no
    FusedAdam JIT extension; lr and wd are overwritten from the schedules before every step.
    """
    groups = build_param_groups(student.encoder, student.predictor)
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(betas), eps=eps, weight_decay=0.0)


def _reset_warmup_step_count(optimizer: torch.optim.Optimizer) -> None:
    """Undo the zero-gradient AdamW step some DeepSpeed wrappers take at construction.

    DeepSpeed's bf16 wrapper without ZeRO initialises the optimizer state by stepping once with
    zero gradients (at lr 0, so weights and moments stay 0) but leaves ``step`` at 1, which
    would shift Adam's bias correction for the whole run. No real step has happened yet here.
    """
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"].zero_()
        elif "step" in state:
            state["step"] = 0


def build_engine(student: IJEPAStudent, ds_config: dict[str, Any], model_cfg, optim_cfg):
    """Target encoder + DeepSpeed engine, in the order the traps demand.

    1. the target is copied from the fp32 encoder before the engine casts anything;
    2. activation checkpointing is applied to the student after the copy (the target runs
       under no_grad and never needs it);
    3. ``deepspeed.initialize`` partitions and casts the student;
    4. the target is paired with the engine's parameters by name.

    Returns ``(engine, target)``.
    """
    import deepspeed

    stage = zero_stage(ds_config)
    target = TargetEncoder(student.encoder, partitioned=stage == 3)
    ckpt = (model_cfg.act_ckpt_impl, model_cfg.act_ckpt_cpu_offload)
    apply_activation_checkpointing(student.encoder.blocks, model_cfg.act_ckpt_encoder, *ckpt)
    apply_activation_checkpointing(
        student.predictor.predictor_blocks, model_cfg.act_ckpt_predictor, *ckpt
    )
    optimizer = build_optimizer(student, optim_cfg.betas, optim_cfg.eps)
    engine, _, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, config=ds_config)
    _reset_warmup_step_count(optimizer)
    target.bind(engine.module.encoder, engine.optimizer)
    return engine, target
