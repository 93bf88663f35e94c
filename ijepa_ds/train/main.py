"""``ijepa-ds train`` / ``python -m ijepa_ds.train``: validate, start ranks, build, train."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ijepa_ds.config import load_config, validate_config, validate_paths
from ijepa_ds.distributed import detect_dist_env, init_distributed
from ijepa_ds.masks import render_mask_grid
from ijepa_ds.observability import MetricsWriter, ProgressMeter, get_logger, setup_logging
from ijepa_ds.observability.stats import is_collapsed
from ijepa_ds.train.ds_config import build_ds_config, zero_stage
from ijepa_ds.train.loop import step_scalars, train_loop
from ijepa_ds.train.run_dir import agree_on_run_dir, write_run_files
from ijepa_ds.train.trainer import build_trainer

log = get_logger(__name__)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=True, help="preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.precision=bf16")
    # The deepspeed launcher appends --local_rank=N; it must agree with LOCAL_RANK.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


class StepReporter:
    """Turns each finished optimizer step into a progress line, scalars and images."""

    def __init__(self, trainer, run_dir: Path, rank: int):
        cfg = trainer.cfg
        self.cfg, self.rank = cfg, rank
        self.progress = ProgressMeter(
            trainer.total_steps, trainer.dist_env.world_size, trainer.global_batch_size
        )
        self.metrics = MetricsWriter(
            run_dir, rank, tensorboard=cfg.logging.tensorboard, jsonl=cfg.logging.jsonl
        )
        self.ipe = trainer.iterations_per_epoch
        self.patch_size = cfg.model.patch_size

    def __call__(self, step: int, info: dict, tensors) -> None:
        epoch = (step - 1) // self.ipe
        self.progress.update(
            step, info["loss"], info["lr"], info["wd"], info["momentum"], epoch,
            step_time=info["step_time"], data_time=info["data_time"],
        )
        every = self.cfg.logging.log_every
        if step % every == 0 or step == 1 or step == self.progress.total_steps:
            self._log(step, epoch, info, tensors)
        image_every = self.cfg.logging.image_every
        if image_every and (step % image_every == 0 or step == 1) and self.metrics.enabled:
            imgs, masks_enc, masks_pred, _ = tensors
            grid = render_mask_grid(
                imgs.float().cpu(), [m.cpu() for m in masks_enc], [m.cpu() for m in masks_pred],
                self.patch_size, mean=self.cfg.data.normalize_mean, std=self.cfg.data.normalize_std,
            )
            self.metrics.log_image(step, "masks/overlay", grid)

    def _log(self, step: int, epoch: int, info: dict, tensors) -> None:
        scalars = {k: info[k] for k in ("loss", "lr", "wd", "momentum")}
        scalars.update(epoch=epoch, **self.progress.scalars())
        scalars.update(step_scalars(info, *tensors))
        if self.rank == 0:
            log.info(self.progress.format_line())
            if is_collapsed(scalars["health/target_feature_std"], 1e-4):
                log.warning("target features look collapsed (std across the batch ~ 0)")
        self.metrics.log_scalars(step, scalars)

    def close(self) -> None:
        self.metrics.close()


def run_training(args: argparse.Namespace) -> dict:
    """Validate everything that can be checked alone, then start the process group and train."""
    cfg = load_config(args.config, args.overrides)
    dist_env = detect_dist_env(cli_local_rank=args.local_rank)
    validate_config(cfg, world_size=dist_env.world_size)
    validate_paths(cfg)
    ds_config = build_ds_config(cfg, dist_env.world_size)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_distributed(dist_env)
    run_dir = agree_on_run_dir(cfg, dist_env.rank)
    setup_logging(dist_env.rank, log_file=run_dir / f"train_rank{dist_env.rank}.log")
    if dist_env.is_main_process:
        write_run_files(run_dir, cfg, ds_config)
    trainer = build_trainer(cfg, dist_env, ds_config)
    log.info(
        "run %s | %d ranks (%s) | ZeRO %d | %s | global batch %d = %d x %d ranks x %d accum | "
        "%d steps (%d per epoch)",
        run_dir, dist_env.world_size, dist_env.launcher, zero_stage(ds_config),
        cfg.optim.precision, trainer.global_batch_size, cfg.data.batch_size,
        dist_env.world_size, trainer.accumulation, trainer.total_steps,
        trainer.iterations_per_epoch,
    )
    reporter = StepReporter(trainer, run_dir, dist_env.rank)
    try:
        losses = train_loop(trainer, start_step=0, on_step=reporter)
    finally:
        reporter.close()
    log.info("done: %d steps, final loss %.4f", len(losses), losses[-1] if losses else float("nan"))
    return {"run_dir": str(run_dir), "losses": losses}


def main(argv: list[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="ijepa-ds train"))
    args = parser.parse_args(argv)
    try:
        run_training(args)
    except ValueError as err:
        print(f"ijepa-ds train: error: {err}", file=sys.stderr)
        return 2
    return 0
