"""Linear probe on frozen features: a small (lr, wd) sweep chosen on a held-out split.

Protocol:
1. Split the train features into probe-train and validation (a seeded random ``val_fraction``
   of the rows).
2. For every (lr, wd) of the sweep, train a head (optional ``BatchNorm1d(affine=False)`` then
   ``Linear``; the BN standardises features whose scale differs wildly between encoders) with
   SGD (momentum 0.9) or AdamW, cosine lr decay over ``epochs``, minibatches of
   ``batch_size`` (0 = full batch); measure validation top-1 every ``val_every`` epochs.
3. The best (lr, wd, epoch) by validation top-1 (ties: earlier in the sweep, earlier epoch)
   is retrained on the whole train set with the same schedule, stopped at that epoch, and
   evaluated once on the test set.
Everything is seeded: the same inputs and seed give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from ijepa_ds.eval.features import FeatureSet


@dataclass
class ProbeConfig:
    """Settings of one linear-probe sweep."""

    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    wds: tuple[float, ...] = (0.0, 5e-4)
    epochs: int = 10
    batch_size: int = 256  # 0 = full batch
    optimizer: Literal["sgd", "adamw"] = "sgd"
    batchnorm: bool = True
    val_fraction: float = 0.1
    val_every: int = 1  # 0 = validate only after the last epoch
    seed: int = 0
    device: str = "cpu"


@dataclass
class ProbeResult:
    """Test top-1 (in %) of the head retrained with the chosen hyperparameters."""

    test_top1: float
    lr: float
    wd: float
    epochs: int
    val_top1: float
    num_train: int
    num_val: int
    num_test: int
    sweep: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows of logits [N, C] whose argmax equals labels [N]."""
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of range(n): (train indices, val indices), val = round(frac * n).

    At least one row stays on each side when n >= 2.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n < 2:
        raise ValueError(f"a train/val split needs at least 2 rows, got {n}")
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def build_head(width: int, num_classes: int, batchnorm: bool, seed: int) -> nn.Module:
    """[BatchNorm1d(affine=False)] + Linear(width, num_classes), weights N(0, 0.01), bias 0."""
    linear = nn.Linear(width, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * 0.01)
        linear.bias.zero_()
    if not batchnorm:
        return linear
    return nn.Sequential(nn.BatchNorm1d(width, affine=False), linear)


def _optimizer(head: nn.Module, kind: str, lr: float, wd: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"unknown probe optimizer {kind!r}; expected 'sgd' or 'adamw'")


def train_head(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lr: float,
    wd: float,
    cfg: ProbeConfig,
    stop_epoch: int | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train a head on x: [N, F], y: [N] for ``cfg.epochs`` (or until ``stop_epoch``).

    The cosine schedule always spans ``cfg.epochs``, so stopping early at epoch e reproduces
    the state the sweep validated at epoch e. ``on_epoch(epoch, head)`` runs after each epoch
    (1-based) with the head in eval mode.
    """
    head = build_head(x.shape[1], num_classes, cfg.batchnorm, cfg.seed).to(x.device)
    opt = _optimizer(head, cfg.optimizer, lr, wd)
    batch = cfg.batch_size if 0 < cfg.batch_size < len(x) else len(x)
    steps_per_epoch = math.ceil(len(x) / batch)
    total = steps_per_epoch * cfg.epochs
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    for epoch in range(1, (stop_epoch or cfg.epochs) + 1):
        head.train()
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            if len(idx) < 2 and cfg.batchnorm:
                continue  # BatchNorm in train mode cannot normalise a single row
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = loss_fn(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        head.eval()
        if on_epoch is not None:
            on_epoch(epoch, head)
    return head.eval()


@torch.no_grad()
def predict(head: nn.Module, x: torch.Tensor, batch: int = 65536) -> torch.Tensor:
    """Logits [N, C] of x [N, F] in eval mode."""
    head.eval()
    return torch.cat([head(x[i : i + batch]) for i in range(0, len(x), batch)])


def _validation_epochs(cfg: ProbeConfig) -> set[int]:
    every = cfg.val_every
    epochs = {e for e in range(1, cfg.epochs + 1) if every and e % every == 0}
    return epochs | {cfg.epochs}


def linear_probe(
    train: FeatureSet, test: FeatureSet, cfg: ProbeConfig, num_classes: int | None = None
) -> ProbeResult:
    """Sweep (lr, wd) on a train/val split of ``train``, retrain the best, report test top-1."""
    if not cfg.lrs or not cfg.wds or cfg.epochs < 1:
        raise ValueError(f"probe needs lrs, wds and epochs >= 1, got {cfg}")
    device = torch.device(cfg.device)
    x, y = train.features.float().to(device), train.labels.to(device)
    num_classes = num_classes or int(max(y.max().item(), test.labels.max().item())) + 1
    tr, va = split_train_val(len(x), cfg.val_fraction, cfg.seed)
    tr, va = tr.to(device), va.to(device)
    checkpoints = _validation_epochs(cfg)
    sweep: list[dict] = []
    for lr in cfg.lrs:
        for wd in cfg.wds:

            def record(epoch: int, head: nn.Module, lr=lr, wd=wd) -> None:
                if epoch in checkpoints:
                    acc = top1(predict(head, x[va]), y[va])
                    sweep.append({"lr": lr, "wd": wd, "epoch": epoch, "val_top1": acc})

            train_head(x[tr], y[tr], num_classes, lr, wd, cfg, on_epoch=record)
    # max() keeps the first maximum: earlier in the sweep, then the earlier epoch.
    best = max(sweep, key=lambda r: r["val_top1"])
    head = train_head(x, y, num_classes, best["lr"], best["wd"], cfg, stop_epoch=best["epoch"])
    test_x, test_y = test.features.float().to(device), test.labels.to(device)
    return ProbeResult(
        test_top1=top1(predict(head, test_x), test_y),
        lr=best["lr"],
        wd=best["wd"],
        epochs=best["epoch"],
        val_top1=best["val_top1"],
        num_train=len(tr),
        num_val=len(va),
        num_test=len(test_y),
        sweep=sweep,
    )
