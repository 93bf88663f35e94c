"""The four AdamW parameter groups of the reference, in the reference order."""

from __future__ import annotations

from torch import nn


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # ZeRO-3 replaces .shape by an empty partition; ds_shape keeps the real one.
    shape = getattr(param, "ds_shape", param.shape)
    return "bias" in name or len(shape) == 1


def build_param_groups(
    encoder: nn.Module, predictor: nn.Module, include_frozen: bool = False
) -> list[dict]:
    """[encoder weights, predictor weights, encoder biases+1-D (wd 0), predictor biases+1-D (wd 0)].

    Groups 2 and 3 carry ``WD_exclude=True`` so the weight-decay schedule leaves them at 0.
    ``include_frozen=True`` keeps non-trainable params (the fixed ``pos_embed`` tables) in the
    groups exactly as the reference does, which the reference ``.pth.tar`` optimizer layout
    needs; the engine leaves them out because ZeRO partitions only trainable params.
    """
    groups: list[dict] = []
    for no_decay in (False, True):
        for module in (encoder, predictor):
            params = [
                p
                for n, p in module.named_parameters()
                if _no_decay(n, p) == no_decay and (include_frozen or p.requires_grad)
            ]
            group: dict = {"params": params}
            if no_decay:
                group.update(WD_exclude=True, weight_decay=0.0)
            groups.append(group)
    return groups


def set_lr_wd(param_groups: list[dict], lr: float, wd: float) -> None:
    """Apply the schedules: every group gets ``lr``; groups without WD_exclude get ``wd``."""
    for group in param_groups:
        group["lr"] = lr
        if not group.get("WD_exclude", False):
            group["weight_decay"] = wd
