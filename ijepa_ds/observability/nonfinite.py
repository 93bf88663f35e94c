"""Stop with a clear error when the loss stops being a finite number.

A NaN loss poisons the weights (and, through the EMA, the target encoder) on the very next
optimizer step, and every later step is wasted compute; stopping at once keeps the last
checkpoint usable and tells the user where it went wrong.
"""

from __future__ import annotations

import math

import torch


class NonFiniteLossError(RuntimeError):
    """Raised by ``check_finite``; carries the offending ``step`` and ``value``."""

    def __init__(self, step: int, value: float) -> None:
        self.step = step
        self.value = value
        super().__init__(
            f"non-finite loss {value} at optimizer step {step}, stopped before the update so no "
            "checkpoint holds it. Things to try: lower the learning rate (schedule.lr) or "
            "lengthen its warmup (schedule.warmup_epochs); check the input data for NaN/inf "
            "values or corrupt images; prefer bf16 over fp16; or set loss.on_nonfinite=skip to "
            "drop such micro-batches instead of stopping."
        )


def check_finite(loss: float | torch.Tensor, step: int) -> None:
    """Raise ``NonFiniteLossError`` if ``loss`` is NaN or +/-inf.

    In a multi-rank run pass the loss already averaged over ranks, so that every rank sees the
    same value and stops together instead of leaving the others blocked in a collective.
    """
    value = float(loss.item()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(step, value)
