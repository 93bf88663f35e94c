"""Gradient norms of encoder and predictor, under any ZeRO stage (for logging only)."""

from __future__ import annotations

import math


def module_grad_norms(engine) -> dict[str, float]:
    """{"grad_norm/encoder": ..., "grad_norm/predictor": ...} of the accumulated gradients.

    Call on every rank after the boundary micro-batch's backward and before ``engine.step``:
    ``safe_get_full_grad`` reassembles partitioned gradients with a collective per parameter,
    so this is for log steps, not every step.
    """
    from deepspeed.utils import safe_get_full_grad

    squares = {"encoder": 0.0, "predictor": 0.0}
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        grad = safe_get_full_grad(param)
        if grad is not None:
            squares[name.split(".", 1)[0]] += grad.float().pow(2).sum().item()
    return {f"grad_norm/{part}": math.sqrt(value) for part, value in squares.items()}
