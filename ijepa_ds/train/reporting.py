"""Progress line, TensorBoard scalars/images and data-health counts of each finished step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ijepa_ds.backend.comm import abandon_distributed
from ijepa_ds.config import config_to_dict
from ijepa_ds.distributed import all_reduce_cpu
from ijepa_ds.masks import render_mask_grid
from ijepa_ds.observability import MetricsWriter, ProgressMeter, get_logger
from ijepa_ds.observability.stats import is_collapsed
from ijepa_ds.observability.wandb_sink import WandbError, WandbOptions
from ijepa_ds.train.loop import is_log_step, step_scalars

log = get_logger(__name__)


def build_metrics_writer(cfg, run_dir: Path, rank: int, resume_step: int | None) -> MetricsWriter:
    """The run's metrics writer, with the sinks ``cfg.logging`` turns on (collective).

    Only rank 0 opens sinks. When W&B refuses to start there (no login, no network), every
    rank raises the same ``WandbError``, so no peer is left waiting in the first all-reduce.
    The broadcast that tells them leaves no collective in flight, so the process groups are
    destroyed first, as after the loop's agreed errors.
    ``resume_step``: the first step that will be logged again, or None on a fresh start.
    """
    c = cfg.logging
    wandb = None
    if c.wandb:
        wandb = WandbOptions(
            c.wandb_project, c.wandb_entity, c.wandb_mode, c.wandb_tags, config_to_dict(cfg)
        )
    writer, error = None, [None]
    try:
        writer = MetricsWriter(run_dir, rank, c.tensorboard, c.jsonl, resume_step, wandb)
    except WandbError as err:
        error = [str(err)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        abandon_distributed()
        raise WandbError(error[0])
    return writer


class StepReporter:
    """Turns each finished optimizer step into a progress line, scalars and images."""

    def __init__(self, trainer, run_dir: Path, rank: int, resume_step: int | None = None):
        cfg = trainer.cfg
        self.cfg, self.rank = cfg, rank
        self.progress = ProgressMeter(
            trainer.total_steps, trainer.dist_env.world_size, trainer.global_batch_size
        )
        self.metrics = build_metrics_writer(
            cfg, run_dir, rank, None if resume_step is None else resume_step + 1
        )
        self.ipe = trainer.iterations_per_epoch
        self.patch_size = cfg.model.patch_size
        # ImageFolder counts the bad images it skipped or converted (per rank, shared with its
        # DataLoader workers); reported summed over ranks at the end of each epoch.
        self.load_stats = getattr(trainer.dataset, "load_stats", None)
        self.reported_stats: dict[str, int] = {}

    def __call__(self, step: int, info: dict, tensors) -> bool:
        epoch = (step - 1) // self.ipe
        if self.load_stats and (step % self.ipe == 0 or step == self.progress.total_steps):
            self._report_data(step, epoch)
        self.progress.update(
            step,
            info["loss"],
            info["lr"],
            info["wd"],
            info["momentum"],
            epoch,
            step_time=info["step_time"],
            data_time=info["data_time"],
        )
        if is_log_step(step, self.cfg.logging.log_every, self.progress.total_steps):
            self._log(step, epoch, info, tensors)
        image_every = self.cfg.logging.image_every
        if image_every and (step % image_every == 0 or step == 1) and self.metrics.enabled:
            imgs, masks_enc, masks_pred, _ = tensors
            grid = render_mask_grid(
                imgs.float().cpu(),
                [m.cpu() for m in masks_enc],
                [m.cpu() for m in masks_pred],
                self.patch_size,
                mean=self.cfg.data.normalize_mean,
                std=self.cfg.data.normalize_std,
            )
            self.metrics.log_image(step, "masks/overlay", grid)
        return False

    def _log(self, step: int, epoch: int, info: dict, tensors) -> None:
        scalars = {k: v for k, v in info.items() if k not in ("step_time", "data_time")}
        scalars.update(epoch=epoch, **self.progress.scalars())
        scalars.update(step_scalars(info, *tensors))
        if self.rank == 0:
            log.info(self.progress.format_line())
            std = scalars.get("health/target_feature_std")
            if std is not None and is_collapsed(std, 1e-4):
                log.warning("target features look collapsed (std across the batch ~ 0)")
        self.metrics.log_scalars(step, scalars)

    def _report_data(self, step: int, epoch: int) -> None:
        """Images skipped or converted since the last report, summed over ranks (collective).

        Counts are loads, not files: a bad file met twice counts twice. With DataLoader
        workers the loads prefetched for the next steps are already included.
        """
        stats = self.load_stats()
        keys = sorted(stats)
        totals = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
        all_reduce_cpu(totals)
        now = {k: int(v) for k, v in zip(keys, totals.tolist())}
        new = {k: now[k] - self.reported_stats.get(k, 0) for k in keys}
        self.reported_stats = now
        if self.rank == 0:
            by_reason = {k: v for k, v in new.items() if k.startswith("skipped_")}
            reasons = ", ".join(f"{k.removeprefix('skipped_')} {v}" for k, v in by_reason.items())
            log.info(
                "data, epoch %d (to step %d): %d unreadable images skipped (%s), %d converted",
                epoch, step, new.get("skipped", 0), reasons, new.get("converted", 0),
            )  # fmt: skip
        self.metrics.log_scalars(step, {f"data/{k}": float(v) for k, v in new.items()})

    def close(self) -> None:
        self.metrics.close()
