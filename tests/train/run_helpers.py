"""Shared by the torchrun workers: run the real trainer entry point and keep the trainer."""

from __future__ import annotations

import deepspeed
import torch

from ijepa_ds.train import main as train_main
from ijepa_ds.train.args import TrainArgs
from tests.train.equivalence_worker import OVERRIDES


def tiny_overrides(run_root: str, name: str, stage: int, max_steps: int, *extra: str) -> list[str]:
    """The tiny synthetic config of the equivalence test, in a run folder of its own."""
    base = [o for o in OVERRIDES if not o.startswith("schedule.max_steps")]
    return base + [
        f"deepspeed.config=zero{stage}", f"schedule.max_steps={max_steps}",
        f"logging.output_dir={run_root}", f"logging.run_name={name}", *extra,
    ]  # fmt: skip


def run_training_keep_trainer(
    overrides: list[str],
    resume: str = "",
    captured: dict | None = None,
    config: str = "fmnist_tiny",
) -> tuple[dict, object]:
    """``run_training`` exactly as the CLI calls it; returns (its result, the trainer it built).

    ``captured["trainer"]`` also holds the trainer when training raises.
    """
    args = TrainArgs(config, tuple(overrides), resume)
    captured = {} if captured is None else captured
    result = train_main.run_training(args, on_trainer=lambda t: captured.update(trainer=t))
    return result, captured["trainer"]


def gathered_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 copies of a module's parameters (gathers ZeRO-3 partitions)."""
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {n: p.detach().float().clone() for n, p in module.named_parameters()}
