"""The training loop: one pass over the optimizer steps of a run.

Per micro-batch: target forward, student forward, loss, ``engine.backward``, ``engine.step``.
Per optimizer step (every ``accumulation`` micro-batches): lr/wd set from the pure schedules
before it, one EMA update after it (only if DeepSpeed applied it), logging on log steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ijepa_ds.distributed import all_reduce_cpu
from ijepa_ds.observability import get_logger
from ijepa_ds.observability.nonfinite import NonFiniteLossError
from ijepa_ds.observability.stats import feature_std, memory_stats
from ijepa_ds.train.grad_norms import module_grad_norms
from ijepa_ds.train.param_groups import set_lr_wd
from ijepa_ds.train.step import compute_loss, move_batch
from ijepa_ds.train.trainer import Trainer, build_loader

log = get_logger(__name__)


@dataclass
class StepStats:
    """Running sums over the micro-batches of the current optimizer step."""

    loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    dropped: int = 0  # micro-batches dropped for a non-finite loss (loss.on_nonfinite=skip)
    data_time: float = 0.0
    started: float = field(default_factory=time.perf_counter)


def _global_sum(value: torch.Tensor) -> float:
    """Sum of a small tensor over all ranks, as a Python float."""
    return all_reduce_cpu(value.detach().float().cpu().clone()).item()


def _any_rank_nonfinite(loss: torch.Tensor) -> bool:
    """True on every rank when any rank's loss is not finite (one tiny all-reduce)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1).cpu()
    return all_reduce_cpu(bad).item() > 0


def _worst(loss: torch.Tensor) -> float:
    """The loss to report: this rank's if it is the bad one, else NaN (bad on another rank)."""
    value = loss.item()
    return value if not math.isfinite(value) else float("nan")


def is_log_step(completed: int, log_every: int, total_steps: int) -> bool:
    """Log after the first step, every ``log_every`` steps and after the last."""
    return completed % log_every == 0 or completed == 1 or completed == total_steps


def micro_step(
    trainer: Trainer, batch, step: int, grad_norms: dict | None = None
) -> tuple[torch.Tensor | None, tuple]:
    """Forward + backward + ``engine.step`` of one micro-batch.

    Returns (loss or None when the micro-batch was dropped, tensors for the hooks). With
    ``loss.on_nonfinite=skip`` a micro-batch whose loss is not finite on any rank is replaced,
    on every rank, by a zero-weight pass on blank images: its gradient contribution is exactly
    zero and DeepSpeed's accumulation counters stay aligned. If even that is not finite the
    weights themselves are broken and the run stops. When ``grad_norms`` is a dict, the
    encoder/predictor gradient norms are measured into it before the optimizer step.
    """
    cfg, engine = trainer.cfg, trainer.engine
    imgs, _, _, masks_enc, masks_pred = move_batch(batch, trainer.device)
    loss, h = compute_loss(
        engine, trainer.target, imgs, masks_enc, masks_pred, cfg.loss.kind, cfg.optim.precision
    )
    tensors = (imgs, masks_enc, masks_pred, h)
    if not _any_rank_nonfinite(loss):
        engine.backward(loss)
        if grad_norms is not None:
            grad_norms.update(module_grad_norms(engine))
        engine.step()
        return loss.detach(), tensors
    if cfg.loss.on_nonfinite != "skip":
        raise NonFiniteLossError(step + 1, _worst(loss))
    blank, _ = compute_loss(
        engine,
        trainer.target,
        torch.zeros_like(imgs),
        masks_enc,
        masks_pred,
        cfg.loss.kind,
        cfg.optim.precision,
    )
    if _any_rank_nonfinite(blank):
        raise NonFiniteLossError(step + 1, _worst(blank))
    log.warning("non-finite loss at optimizer step %d: micro-batch dropped", step + 1)
    engine.backward(blank * 0.0)
    engine.step()
    return None, tensors


def train_loop(trainer: Trainer, start_step: int, hooks=()) -> list[float]:
    """Run optimizer steps ``start_step .. trainer.total_steps - 1``; returns per-step losses.

    Each hook ``hook(step, info, tensors)`` runs after every optimizer step on every rank, with
    the number of completed steps, a dict of the step's values (loss, lr, wd, momentum,
    timings) and the last micro-batch's ``(imgs, masks_enc, masks_pred, target_features)``.
    A hook returning True stops the loop after that step (e.g. saved for preemption).
    """
    engine, target, sched = trainer.engine, trainer.target, trainer.schedule
    world, accum = trainer.dist_env.world_size, trainer.accumulation
    losses: list[float] = []
    step, micro = start_step, 0
    stats = StepStats()
    fetch_start = time.perf_counter()
    for batch in build_loader(trainer, start_step):
        stats.data_time += time.perf_counter() - fetch_start
        if micro == 0:
            lr, wd = sched.lr_at(step), sched.wd_at(step)
            set_lr_wd(engine.optimizer.param_groups, lr, wd)
        log_now = is_log_step(step + 1, trainer.cfg.logging.log_every, trainer.total_steps)
        norms = {} if micro == accum - 1 and log_now else None
        loss, tensors = micro_step(trainer, batch, step, norms)
        if loss is None:
            stats.dropped += 1
        else:
            stats.loss += loss.cpu()
        micro += 1
        if micro == accum:
            momentum = sched.momentum_at(step)
            if engine.was_step_applied():
                target.ema_update(momentum)
            step, micro = step + 1, 0
            kept = _global_sum(torch.tensor([accum - stats.dropped], dtype=torch.float32))
            step_loss = _global_sum(stats.loss) / kept if kept else float("nan")
            losses.append(step_loss)
            info = dict(loss=step_loss, lr=lr, wd=wd, momentum=momentum)
            info["dropped_micro_batches"] = world * accum - kept
            info.update(norms or {})
            info.update(step_time=time.perf_counter() - stats.started, data_time=stats.data_time)
            stop = [hook(step, info, tensors) for hook in hooks]
            if any(stop):
                break
            stats = StepStats()
        fetch_start = time.perf_counter()
    return losses


def step_scalars(info: dict, imgs, masks_enc, masks_pred, h) -> dict[str, float]:
    """TensorBoard/JSONL scalars of one step beyond loss/lr/wd/momentum and timings."""
    scalars = {
        "tokens/context": float(masks_enc[0].shape[1]),
        "tokens/target": float(masks_pred[0].shape[1]),
        "health/target_feature_std": feature_std(h),
    }
    scalars.update({f"memory/{k}": float(v) for k, v in memory_stats().items()})
    return scalars
