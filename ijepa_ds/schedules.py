"""Learning-rate, weight-decay and EMA-momentum schedules as pure functions of the step.

Step convention: ``step`` counts optimizer steps already taken (0-based), so the values for
the optimizer step numbered ``step`` equal what the reference schedulers return after
``step + 1`` calls to ``.step()`` (the reference calls ``scheduler.step()`` before each
optimizer step), and the EMA momentum used after that optimizer step is the reference
generator's ``step``-th value. Nothing is replayed on resume: the value depends on the
step alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Everything the three schedules need, in optimizer steps.

    ``total_steps`` is ``int(ipe_scale * epochs * iterations_per_epoch)`` and
    ``warmup_steps`` is ``int(warmup_epochs * iterations_per_epoch)``, as in the reference.
    ``momentum_steps`` is the same product as ``total_steps`` but not truncated: the reference
    momentum generator divides by the float ``ipe * epochs * ipe_scale``.
    """

    total_steps: int
    momentum_steps: float
    warmup_steps: int
    start_lr: float
    lr: float
    final_lr: float
    weight_decay: float
    final_weight_decay: float
    momentum_start: float
    momentum_end: float

    @classmethod
    def from_epochs(
        cls,
        iterations_per_epoch: int,
        epochs: int,
        warmup_epochs: float,
        ipe_scale: float,
        **values: float,
    ) -> Schedule:
        """Build from epoch-based settings the way the reference derives step counts."""
        return cls(
            total_steps=int(ipe_scale * epochs * iterations_per_epoch),
            momentum_steps=iterations_per_epoch * epochs * ipe_scale,
            warmup_steps=int(warmup_epochs * iterations_per_epoch),
            **values,
        )

    def lr_at(self, step: int) -> float:
        """Linear warmup start_lr -> lr, then cosine lr -> final_lr (held there after the end)."""
        t = step + 1
        if t < self.warmup_steps:
            return self.start_lr + t / max(1, self.warmup_steps) * (self.lr - self.start_lr)
        # Clamped at 1 so steps past the end (max_steps beyond the schedule) stay at final_lr
        # instead of climbing back up the cosine; inside the schedule this is the reference.
        progress = min(1.0, (t - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        value = self.final_lr + (self.lr - self.final_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )
        return max(self.final_lr, value)

    def wd_at(self, step: int) -> float:
        """Cosine weight_decay -> final_weight_decay, clamped at the final value."""
        progress = min(1.0, (step + 1) / max(1, self.total_steps))
        ref, final = self.weight_decay, self.final_weight_decay
        value = final + (ref - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(final, value) if final <= ref else min(final, value)

    def momentum_at(self, step: int) -> float:
        """EMA momentum after optimizer step ``step``: linear momentum_start -> momentum_end,
        held at momentum_end past the end of the schedule (``schedule.max_steps`` beyond it)."""
        span = self.momentum_end - self.momentum_start
        return self.momentum_start + min(step, self.momentum_steps) * span / self.momentum_steps
