"""The training loop: one pass over the optimizer steps of a run.

Per micro-batch: target forward, student forward, loss, ``engine.backward``, ``engine.step``.
Per optimizer step (every ``accumulation`` micro-batches): lr/wd set from the pure schedules
before it, one EMA update after it (only if DeepSpeed applied it), logging on log steps.

Host synchronisation: the step's loss sum, kept count and non-finite count stay on the device
and are reduced over ranks once per optimizer step, in one all-reduce, just before the boundary
micro-batch's ``engine.step()`` (``_global_sum``). With ``loss.on_nonfinite=stop`` that one read
is the loop's only host synchronisation on a non-log step; log steps add the gradient norms and
the health statistics. Why it cannot be skipped on non-log steps: only the reduced flag tells a
rank that another rank's loss was NaN, and the update of the boundary ``engine.step()`` must not
be applied then (every rank takes part in a ZeRO step, so they must all decide alike, before
it). Non-boundary ``engine.step()`` calls apply nothing (DeepSpeed 0.19.8 ``engine.step`` runs
``_take_model_step``, the only place the optimizer steps, on
``is_gradient_accumulation_boundary()`` only, for every ZeRO stage), so a NaN in an earlier
micro-batch is still caught in time. ``loss.on_nonfinite=skip`` needs to know before each
backward whether to replace the micro-batch, so it adds one 1-element all-reduce per micro-batch
(``_any_rank_nonfinite``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ijepa_ds.backend.param_groups import set_lr_wd
from ijepa_ds.distributed import all_reduce_on_device
from ijepa_ds.observability import get_logger
from ijepa_ds.observability.nonfinite import NonFiniteLossError
from ijepa_ds.observability.stats import feature_std, memory_stats
from ijepa_ds.train.step import compute_loss, move_batch
from ijepa_ds.train.trainer import Trainer, build_loader

log = get_logger(__name__)


@dataclass
class StepStats:
    """Bookkeeping of the current optimizer step, shared by its micro-batches.

    ``sums``: [3] on the training device, this rank's (loss sum of the kept micro-batches,
    kept count, non-finite count); adding to it never synchronises. ``totals``: the loss sum
    and kept count summed over ranks, as Python floats, set at the accumulation boundary.
    ``grad_norms``: a dict to fill with the encoder/predictor gradient norms before the
    optimizer step (log steps), or None.
    """

    sums: torch.Tensor
    totals: tuple[float, float] | None = None
    grad_norms: dict | None = None
    data_time: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def on(cls, device: torch.device, grad_norms: dict | None = None) -> StepStats:
        return cls(sums=torch.zeros(3, device=device), grad_norms=grad_norms)

    def add(self, loss: torch.Tensor) -> None:
        """Count one kept micro-batch: loss is a scalar, finite or not."""
        loss = loss.detach().float()
        bad = (~torch.isfinite(loss)).float()
        self.sums += torch.stack((loss, torch.ones_like(loss), bad))


def _global_sum(values: torch.Tensor) -> list[float]:
    """Sum of a small tensor over all ranks as Python floats: one all-reduce on its device,
    one device-to-host copy. ``values`` itself is left as it was."""
    return all_reduce_on_device(values.detach().float().clone()).tolist()


def _any_rank_nonfinite(loss: torch.Tensor) -> bool:
    """True on every rank when any rank's loss is not finite (one tiny all-reduce)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    return all_reduce_on_device(bad).item() > 0


def _worst(loss: torch.Tensor) -> float:
    """The loss to report: this rank's if it is the bad one, else NaN (bad on another rank)."""
    value = loss.item()
    return value if not math.isfinite(value) else float("nan")


def close_step(stats: StepStats, step: int) -> None:
    """The step's one collective: reduce ``stats.sums`` into ``stats.totals``.

    Raises ``NonFiniteLossError`` (on every rank alike) when any micro-batch of the step had a
    non-finite loss on any rank; call it before the boundary ``engine.step()``.
    """
    loss_sum, kept, nonfinite = _global_sum(stats.sums)
    if nonfinite > 0:
        raise NonFiniteLossError(step + 1, _worst(stats.sums[0]))
    stats.totals = (loss_sum, kept)


def _zero_weight_loss(trainer: Trainer, imgs, masks_enc, masks_pred, step: int) -> torch.Tensor:
    """A zero-weight stand-in for a dropped micro-batch: the loss of blank images times 0."""
    cfg = trainer.cfg
    blank, _ = compute_loss(
        trainer.engine,
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
    return blank * 0.0


def micro_step(trainer: Trainer, batch, step: int, stats: StepStats | None = None) -> tuple:
    """Forward + backward + ``engine.step`` of one micro-batch of optimizer step ``step``.

    Returns ``(imgs, masks_enc, masks_pred, target_features)`` for the hooks. ``stats`` is the
    step's bookkeeping, the same object for all its micro-batches (None: a fresh one, for
    callers running one micro-batch per step). On the accumulation boundary, after the
    backward and before ``engine.step``, ``close_step`` reduces it over ranks and stops the run
    if any loss of the step was not finite, so that update is never applied. With
    ``loss.on_nonfinite=skip`` a micro-batch whose loss is not finite on any rank is replaced,
    on every rank, by a zero-weight pass on blank images: its gradient contribution is exactly
    zero and DeepSpeed's accumulation counters stay aligned. If even that is not finite the
    weights themselves are broken and the run stops.
    """
    cfg, engine = trainer.cfg, trainer.engine
    stats = StepStats.on(trainer.device) if stats is None else stats
    imgs, _, _, masks_enc, masks_pred = move_batch(batch, trainer.device)
    loss, h = compute_loss(
        engine, trainer.target, imgs, masks_enc, masks_pred, cfg.loss.kind, cfg.optim.precision
    )
    if cfg.loss.on_nonfinite == "skip" and _any_rank_nonfinite(loss):
        loss = _zero_weight_loss(trainer, imgs, masks_enc, masks_pred, step)
    else:
        stats.add(loss)
    engine.backward(loss)
    if engine.is_boundary():
        close_step(stats, step)
        if stats.grad_norms is not None:
            stats.grad_norms.update(engine.grad_norms())
    engine.step()
    return imgs, masks_enc, masks_pred, h


def is_log_step(completed: int, log_every: int, total_steps: int) -> bool:
    """Log after the first step, every ``log_every`` steps and after the last."""
    return completed % log_every == 0 or completed == 1 or completed == total_steps


def _step_info(stats: StepStats, world: int, accum: int, **values: float) -> dict:
    """The hooks' dict for one finished step: loss averaged over the kept micro-batches."""
    if stats.totals is None:
        raise RuntimeError("DeepSpeed's accumulation boundary disagrees with the loop's count")
    loss_sum, kept = stats.totals
    info = dict(loss=loss_sum / kept if kept else float("nan"), **values)
    info["dropped_micro_batches"] = world * accum - kept
    info.update(stats.grad_norms or {})
    info.update(step_time=time.perf_counter() - stats.started, data_time=stats.data_time)
    return info


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
    stats = StepStats.on(trainer.device)
    fetch_start = time.perf_counter()
    for batch in build_loader(trainer, start_step):
        stats.data_time += time.perf_counter() - fetch_start
        if micro == 0:
            lr, wd = sched.lr_at(step), sched.wd_at(step)
            set_lr_wd(engine.param_groups, lr, wd)
            if is_log_step(step + 1, trainer.cfg.logging.log_every, trainer.total_steps):
                stats.grad_norms = {}
        tensors = micro_step(trainer, batch, step, stats)
        micro += 1
        if micro == accum:
            momentum = sched.momentum_at(step)
            if engine.step_applied():
                target.ema_update(momentum)
            step, micro = step + 1, 0
            info = _step_info(stats, world, accum, lr=lr, wd=wd, momentum=momentum)
            losses.append(info["loss"])
            stop = [hook(step, info, tensors) for hook in hooks]
            if any(stop):
                break
            stats = StepStats.on(trainer.device)
        fetch_start = time.perf_counter()
    return losses


def step_scalars(info: dict, imgs, masks_enc, masks_pred, h) -> dict[str, float]:
    """TensorBoard/JSONL scalars of one step beyond loss/lr/wd/momentum and timings.

    ``health/target_feature_std`` is a spread across the local batch, so it is left out at
    micro-batch 1 (the usual ViT-G setting), where it is undefined.
    """
    scalars = {  # real tokens per sample and mask (padding, -1, excluded), and padding share
        "tokens/context": float((masks_enc[0] >= 0).sum(dim=1).float().mean()),
        "tokens/target": float((masks_pred[0] >= 0).sum(dim=1).float().mean()),
        "tokens/context_padding": float((masks_enc[0] < 0).float().mean()),
    }
    if h.shape[0] >= 2:
        scalars["health/target_feature_std"] = feature_std(h)
    scalars.update({f"memory/{k}": float(v) for k, v in memory_stats().items()})
    return scalars
