"""The trainer's engine: one DeepSpeed engine around the student, behind a small interface.

``build_engine`` wraps the student in ``deepspeed.initialize`` with a torch AdamW over the four
reference groups; ``Engine`` is all the rest of the package sees of it: forward, backward,
step, the parameter groups the schedules write, fp32 masters for the EMA, save and load.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ijepa_ds.backend.ds_config import zero_stage
from ijepa_ds.backend.guard import check_deepspeed, require_attribute
from ijepa_ds.backend.param_groups import build_param_groups
from ijepa_ds.backend.zero3 import flat_fp32_master_views
from ijepa_ds.backend.zero_files import fix_zero3_universal_groups, universal_client_state


def build_optimizer(student: nn.Module, betas, eps: float) -> torch.optim.AdamW:
    """torch AdamW over the four reference groups of ``student.encoder`` and ``.predictor``.

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


def build_engine(student: nn.Module, ds_config: dict[str, Any], betas, eps: float) -> Engine:
    """``deepspeed.initialize`` of ``student`` (partitioned and cast as ``ds_config`` says).

    Build the EMA target and apply activation checkpointing first (``train.trainer``): the
    target is copied from the fp32 student before DeepSpeed casts anything.
    """
    import deepspeed

    check_deepspeed()
    optimizer = build_optimizer(student, betas, eps)
    ds_engine, _, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, config=ds_config)
    _reset_warmup_step_count(optimizer)
    return Engine(ds_engine, zero_stage(ds_config))


class Engine:
    """What the trainer, the checkpoints and the benchmarks use of a DeepSpeed engine.

    ``ds`` is the DeepSpeed engine itself, for tests and benchmarks that inspect its knobs.
    """

    def __init__(self, ds_engine, stage: int):
        self.ds = ds_engine
        self.zero_stage = stage

    @property
    def module(self) -> nn.Module:
        """The student as trained (cast; partitioned under ZeRO-3)."""
        return self.ds.module

    @property
    def optimizer(self):
        """DeepSpeed's optimizer wrapper (its ``param_groups`` are the four reference groups)."""
        return self.ds.optimizer

    @property
    def param_groups(self) -> list[dict]:
        return self.ds.optimizer.param_groups

    @property
    def device(self) -> torch.device:
        return torch.device(self.ds.device)

    def __call__(self, *inputs):
        return self.ds(*inputs)

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss (scaled for accumulation by DeepSpeed)."""
        self.ds.backward(loss)

    def is_boundary(self) -> bool:
        """True when the next ``step`` applies the accumulated gradients."""
        return self.ds.is_gradient_accumulation_boundary()

    def step(self) -> None:
        self.ds.step()

    def step_applied(self) -> bool:
        """False when the last boundary step was skipped (a non-finite gradient)."""
        return self.ds.was_step_applied()

    def fp32_masters(self) -> dict[int, torch.Tensor]:
        """id(param) -> fp32 master, where the optimizer keeps them without a mapping."""
        return flat_fp32_master_views(self.ds.optimizer)

    def grad_norms(self) -> dict[str, float]:
        """{"grad_norm/encoder", "grad_norm/predictor"} of the accumulated gradients.

        Call on every rank after the boundary micro-batch's backward and before ``step``:
        partitioned gradients are reassembled with a collective per parameter, so this is for
        log steps, not every step.
        """
        from deepspeed.utils import safe_get_full_grad

        squares = {"encoder": 0.0, "predictor": 0.0}
        for name, param in self.ds.module.named_parameters():
            if not param.requires_grad:
                continue
            grad = safe_get_full_grad(param)
            if grad is not None:
                squares[name.split(".", 1)[0]] += grad.float().pow(2).sum().item()
        return {f"grad_norm/{part}": value**0.5 for part, value in squares.items()}

    def save(self, folder: str, tag: str, failures) -> None:
        """Every rank writes its shards to ``folder/tag``; a failed write goes to
        ``failures.call`` instead of being raised between DeepSpeed's barriers."""
        with _guarded_writes(self.ds, failures):
            self.ds.save_checkpoint(
                folder, tag=tag, client_state=universal_client_state(), save_latest=False
            )

    def load(self, folder: str, tag: str, universal: bool = False) -> bool:
        """Load weights, optimizer and counters from ``folder/tag``; False if DeepSpeed found
        nothing to load. ``universal``: the engine was built with ``load_universal`` and the
        folder holds a universal checkpoint."""
        hparams = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        path, _ = self.ds.load_checkpoint(folder, tag=tag, load_lr_scheduler_states=False)
        if path is None:
            return False
        if universal and self.zero_stage == 3:
            fix_zero3_universal_groups(self.ds.optimizer, hparams)
        return True


@contextmanager
def _guarded_writes(ds_engine, failures):
    """Route DeepSpeed's own file writes of ``save_checkpoint`` through ``failures.call``.

    DeepSpeed raises a failed write on the spot, between its internal barriers; recording it
    instead keeps this rank in step with the others through DeepSpeed's collectives. Relies on
    DeepSpeedEngine's ``checkpoint_engine`` (``save``, ``makedirs``) and its private
    ``_copy_recovery_script``: every file ``save_checkpoint`` writes goes through these three.
    """
    writer = require_attribute(ds_engine, "checkpoint_engine", "DeepSpeedEngine")
    save, makedirs = writer.save, writer.makedirs
    copy_scripts = require_attribute(ds_engine, "_copy_recovery_script", "DeepSpeedEngine")
    # Same parameter names as DeepSpeed's, which passes some of them by keyword.
    writer.save = lambda state_dict, path: failures.call(path, save, state_dict, path)
    writer.makedirs = lambda path, exist_ok=False: failures.call(path, makedirs, path, exist_ok)
    ds_engine._copy_recovery_script = lambda save_path: failures.call(
        save_path, copy_scripts, save_path
    )
    try:
        yield
    finally:
        writer.save, writer.makedirs = save, makedirs
        ds_engine._copy_recovery_script = copy_scripts
