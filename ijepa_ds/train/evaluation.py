"""Checks during pretraining: held-out JEPA loss and cheap representation health.

- ``validation_loss``: the JEPA loss on a fixed held-out subset (deterministic eval crops,
  masks fixed by seed), so epochs compare; computed without gradients on every rank.
- ``health``: kNN top-1 of the target encoder's average-pooled features (labelled train subset
  vs held-out subset), their effective rank (RankMe) and std across images (collapse signal).

Everything runs on all ranks in lockstep (under ZeRO-3 every forward gathers parameters), each
rank on an equal share, so subset sizes are rounded down to a multiple of ranks x batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from ijepa_ds.checkpoint.layout import resumed_best, step_of, write_best
from ijepa_ds.data import build_dataset_from_config, build_eval_transform, build_train_loader
from ijepa_ds.data.sampler import mix_seed
from ijepa_ds.distributed import all_reduce_cpu
from ijepa_ds.eval.features import extract_features
from ijepa_ds.eval.knn import knn_classify
from ijepa_ds.masks import MaskCollator
from ijepa_ds.observability import get_logger
from ijepa_ds.observability.stats import effective_rank
from ijepa_ds.train.step import compute_loss, move_batch

log = get_logger(__name__)
VAL_TAG = 0x56414C  # "VAL": seeds of the held-out subset and its masks


def _fixed_subset(dataset: Dataset, count: int, seed: int) -> Subset:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:count].tolist())


def _round_down(count: int, unit: int) -> int:
    return (count // unit) * unit


class PretrainEvaluator:
    """Held-out loss and online health for a built ``Trainer`` (see module docstring)."""

    def __init__(self, trainer):
        from ijepa_ds.masks import build_mask_sampler_from_config

        cfg = trainer.cfg
        self.trainer, self.cfg = trainer, cfg
        self.world = trainer.dist_env.world_size
        self.batch = cfg.eval.batch_size
        transform = build_eval_transform(
            cfg.data.crop_size, mean=cfg.data.normalize_mean, std=cfg.data.normalize_std
        )
        self.heldout = self._dataset(False, transform)
        self.labelled = self._dataset(True, transform)
        self.val_global = self.world * min(self.batch, cfg.data.batch_size)
        self.val_sampler = build_mask_sampler_from_config(
            cfg, self.val_global, seed=mix_seed(cfg.seed, VAL_TAG)
        )

    def _dataset(self, train: bool, transform) -> Dataset | None:
        data = self.cfg.data
        try:
            return build_dataset_from_config(data, train, transform)
        except (ValueError, FileNotFoundError) as err:
            log.warning(
                "pretraining checks: no %s split (%s)", "train" if train else "held-out", err
            )
            return None

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean JEPA loss over ``eval.pretrain_val_samples`` held-out images (all ranks)."""
        count = _round_down(
            min(self.cfg.eval.pretrain_val_samples, len(self.heldout or [])), self.val_global
        )
        if count == 0:
            return None
        subset = _fixed_subset(self.heldout, count, mix_seed(self.cfg.seed, VAL_TAG))
        micro = self.val_global // self.world
        loader = build_train_loader(
            subset, MaskCollator(self.val_sampler), self.val_global, micro,
            self.trainer.dist_env.rank, self.world, mix_seed(self.cfg.seed, VAL_TAG),
            max_steps=count // self.val_global,
        )  # fmt: skip
        engine, total, batches = self.trainer.engine, torch.zeros(2), 0
        engine.eval()
        try:
            for batch in loader:
                imgs, _, _, masks_enc, masks_pred = move_batch(batch, self.trainer.device)
                loss, _ = compute_loss(
                    engine, self.trainer.target, imgs, masks_enc, masks_pred,
                    self.cfg.loss.kind, self.cfg.optim.precision,
                )  # fmt: skip
                total += torch.tensor([loss.item(), 1.0])
                batches += 1
        finally:
            engine.train()
        all_reduce_cpu(total)
        return (total[0] / total[1]).item()

    @torch.no_grad()
    def health(self) -> dict[str, float]:
        """kNN top-1 (%), RankMe and feature std of the target encoder's pooled features."""
        unit = self.world * self.batch
        n_train = _round_down(
            min(self.cfg.eval.health_train_samples, len(self.labelled or [])), unit
        )
        n_val = _round_down(min(self.cfg.eval.health_val_samples, len(self.heldout or [])), unit)
        if n_train == 0 or n_val == 0:
            return {}
        seed = mix_seed(self.cfg.seed, VAL_TAG, 1)
        encoder = self.trainer.target.module
        train = extract_features(encoder, _fixed_subset(self.labelled, n_train, seed),
                                 batch_size=self.batch, device=self.trainer.device)  # fmt: skip
        val = extract_features(encoder, _fixed_subset(self.heldout, n_val, seed),
                               batch_size=self.batch, device=self.trainer.device)  # fmt: skip
        knn = knn_classify(train, val, k=self.cfg.eval.knn_k,
                           temperature=self.cfg.eval.knn_temperature)  # fmt: skip
        return {
            "health/knn_top1": knn.top1,
            "health/rankme": effective_rank(val.features),
            "health/feature_std": val.features.std(dim=0).mean().item(),
        }


# eval.best_metric -> (the scalar it reads, True when higher is better)
BEST_METRICS = {"val_loss": ("val/loss", False), "knn": ("health/knn_top1", True)}


class EvaluationHook:
    """Training-loop hook: validation loss at epoch ends, health every N steps.

    A new best value of ``eval.best_metric`` (lowest held-out loss, or highest online kNN
    top-1) asks ``policy`` for a checkpoint at this step; ``mark_best`` (a hook placed after
    the checkpoint hook) then points ``checkpoints/best`` at it.
    """

    def __init__(self, evaluator: PretrainEvaluator, metrics, ipe: int, policy=None):
        self.evaluator, self.metrics, self.ipe, self.policy = evaluator, metrics, ipe, policy
        self.eval_cfg = evaluator.cfg.eval
        self.best_key, self.higher_is_better = BEST_METRICS[self.eval_cfg.best_metric]
        self.best: float | None = None
        self.improved_at: int | None = None

    def resume(self, run_dir, start_step: int) -> None:
        """Compare against the run's best so far, as ``best.json`` recorded it."""
        self.best = resumed_best(run_dir, start_step, self.best_key)

    def mark_best(self, saver, run_dir, rank: int):
        """Hook: after ``saver`` saved an improved step, write the ``best`` pointer (rank 0)."""

        def hook(step: int, info: dict, tensors) -> bool:
            if self.improved_at == step and saver.saved and step_of(saver.saved[-1]) == step:
                if rank == 0:
                    write_best(run_dir, saver.saved[-1], self.best_key, self.best)
                log.info("best %s %.4f: %s", self.best_key, self.best, saver.saved[-1])
            return False

        return hook

    def _consider(self, step: int, value: float) -> None:
        """Track a new best value and ask for a checkpoint at this step."""
        if self.best is None or (value > self.best if self.higher_is_better else value < self.best):
            self.best, self.improved_at = value, step
            if self.policy is not None:
                self.policy.request_save()

    def __call__(self, step: int, info: dict, tensors) -> bool:
        scalars: dict[str, float] = {}
        every = self.eval_cfg.pretrain_val_every_epochs
        if every and step % self.ipe == 0 and (step // self.ipe) % every == 0:
            loss = self.evaluator.validation_loss()
            if loss is not None:
                scalars["val/loss"] = loss
                log.info("epoch %d | held-out JEPA loss %.4f", step // self.ipe, loss)
        health_every = self.eval_cfg.health_every_steps
        if health_every and step % health_every == 0:
            scalars.update(self.evaluator.health())
            std = scalars.get("health/feature_std")
            if std is not None:
                log.info("step %d | online kNN %.1f%% | RankMe %.1f | feature std %.4f", step,
                         scalars["health/knn_top1"], scalars["health/rankme"], std)  # fmt: skip
                if std < self.eval_cfg.collapse_std_threshold:
                    log.warning("step %d: target features look collapsed (std %.2e < %.2e)",
                                step, std, self.eval_cfg.collapse_std_threshold)  # fmt: skip
        if self.best_key in scalars:
            self._consider(step, scalars[self.best_key])
        if scalars:
            self.metrics.log_scalars(step, scalars)
        return False
