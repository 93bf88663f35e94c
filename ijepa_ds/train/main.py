"""The trainer's entry point below the CLI: validate, start ranks, lock the run, build, train."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import torch

from ijepa_ds.backend.comm import abandon_distributed, init_distributed
from ijepa_ds.backend.ds_config import build_ds_config, zero_stage
from ijepa_ds.checkpoint.policy import STOP_SIGNALS, SavePolicy
from ijepa_ds.checkpoint.resume import agree_on_resume, load_checkpoint, prepare_resume
from ijepa_ds.checkpoint.run_lock import RunLockedError, agree_on_run_lock
from ijepa_ds.checkpoint.saver import CheckpointHook, CheckpointSaveError
from ijepa_ds.config import ConfigError, load_config, validate_config, validate_paths
from ijepa_ds.distributed import detect_dist_env, dist_timeout
from ijepa_ds.observability import get_logger, setup_logging
from ijepa_ds.observability.logging import rank_log_file
from ijepa_ds.observability.nonfinite import NonFiniteLossError
from ijepa_ds.train.args import TrainArgs
from ijepa_ds.train.evaluation import EvaluationHook, PretrainEvaluator
from ijepa_ds.train.loop import train_loop
from ijepa_ds.train.reporting import StepReporter
from ijepa_ds.train.run_dir import agree_on_run_dir, write_run_files
from ijepa_ds.train.trainer import Trainer, build_trainer

log = get_logger(__name__)
# Raised by every rank at once, after a collective that told them all: nothing is in flight.
AGREED_ERRORS = (NonFiniteLossError, CheckpointSaveError)


def prepare(args: TrainArgs):
    """Everything checkable without a process group: config, launcher env, DeepSpeed JSON.

    Any problem is a ``ConfigError`` raised before a single rank waits on another.
    """
    try:
        cfg = load_config(args.config, args.overrides)
        dist_env = detect_dist_env(cli_local_rank=args.local_rank)
        validate_config(cfg, world_size=dist_env.world_size)
        validate_paths(cfg)
        dist_timeout()  # a malformed IJEPA_DS_DIST_TIMEOUT_MINUTES fails here, not later
        ds_config = build_ds_config(cfg, dist_env.world_size)
        offload = cfg.model.act_ckpt_cpu_offload and cfg.model.act_ckpt_impl == "deepspeed"
        if offload and not torch.cuda.is_available():
            raise ConfigError(
                "model.act_ckpt_cpu_offload=true with act_ckpt_impl=deepspeed needs a GPU: on a "
                "CPU device DeepSpeed's offloaded copy shares storage with the activation it frees"
            )
        if args.resume == "auto" and not cfg.logging.run_name:
            raise ConfigError("--resume auto needs logging.run_name (the run folder to look in)")
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return cfg, dist_env, ds_config


def run_training(
    args: TrainArgs,
    on_policy: Callable[[SavePolicy], None] | None = None,
    stop_signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
    on_locked: Callable[[Path], None] | None = None,
    on_trainer: Callable[[Trainer], None] | None = None,
) -> dict:
    """Validate everything that can be checked alone, then start the process group, lock the
    run folder and train.

    ``on_policy(policy)`` (optional) receives the run's ``SavePolicy`` before training starts,
    so a launcher can turn its preemption signal into a collective save-and-stop.
    ``stop_signals``: the signals that save and stop at the next step boundary (a launcher
    with its own SIGTERM handling passes ``()``). ``on_locked(run_dir)`` (optional) runs on
    every rank once the run folder is locked, before anything else is written into it.
    ``on_trainer(trainer)`` (optional) receives the trainer once it is built, before a resume
    loads into it (tests inspect its engine and target after the run).

    Raises ``RunLockedError`` on every rank when another live job holds the run folder. The
    result's ``stopped_by`` names the signal that stopped the run before its last step.
    """
    cfg, dist_env, ds_config = prepare(args)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_distributed(dist_env)
    run_dir = agree_on_run_dir(cfg, dist_env.rank)
    try:
        lock = agree_on_run_lock(run_dir, dist_env.rank)
    except (RunLockedError, OSError):
        abandon_distributed()  # every rank raised it together, right after a broadcast
        raise
    with lock:
        if on_locked is not None:
            on_locked(run_dir)
        callbacks = (on_policy, on_trainer)
        return _train(args, cfg, dist_env, ds_config, run_dir, callbacks, stop_signals)


def _train(args, cfg, dist_env, ds_config, run_dir, callbacks, stop_signals) -> dict:
    """``run_training`` once the run folder is locked."""
    setup_logging(
        dist_env.rank,
        level=os.environ.get("IJEPA_DS_LOG_LEVEL", "INFO"),
        log_file=rank_log_file(run_dir, dist_env.rank),
    )
    resume_from = agree_on_resume(run_dir, args.resume, args.resume_fallback, cfg, dist_env.rank)
    if resume_from is not None:
        prepare_resume(resume_from, dist_env, ds_config)
    if dist_env.is_main_process:
        write_run_files(run_dir, cfg, ds_config)
    on_policy, on_trainer = callbacks
    trainer = build_trainer(cfg, dist_env, ds_config)
    if on_trainer is not None:
        on_trainer(trainer)
    _log_run(trainer, run_dir, ds_config)
    start_step = 0
    if resume_from is not None:
        start_step = load_checkpoint(trainer, resume_from).step
    hooks, reporter, saver = build_hooks(trainer, run_dir, start_step, on_policy, stop_signals)
    try:
        losses = train_loop(trainer, start_step=start_step, hooks=hooks)
    except AGREED_ERRORS:
        abandon_distributed()  # the peers stop here too; no group left to the finalisers
        raise
    finally:
        saver.policy.restore_signal_handlers()
        reporter.close()
    log.info("done: %d steps, final loss %.4f", len(losses), losses[-1] if losses else float("nan"))
    return {
        "run_dir": str(run_dir),
        "losses": losses,
        "start_step": start_step,
        "checkpoints": [str(p) for p in saver.saved],
        "stopped_by": saver.policy.stopped_by,
        "rank": dist_env.rank,
        "total_steps": trainer.total_steps,
    }


def _log_run(trainer, run_dir, ds_config: dict) -> None:
    cfg, env = trainer.cfg, trainer.dist_env
    log.info(
        "run %s | %d ranks (%s) | ZeRO %d | %s | global batch %d = %d x %d ranks x %d accum | "
        "%d steps (%d per epoch)",
        run_dir,
        env.world_size,
        env.launcher,
        zero_stage(ds_config),
        cfg.optim.precision,
        trainer.global_batch_size,
        cfg.data.batch_size,
        env.world_size,
        trainer.accumulation,
        trainer.total_steps,
        trainer.iterations_per_epoch,
    )


def build_hooks(trainer, run_dir, start_step: int, on_policy=None, stop_signals=STOP_SIGNALS):
    """The loop's hooks in call order: progress and metrics, online evaluation (when the config
    asks for it), checkpoints, then the ``best`` alias. ``start_step`` > 0 means resumed.

    Returns ``(hooks, reporter, saver)``; the caller closes the reporter and restores the
    signal handlers (``saver.policy.restore_signal_handlers()``).
    """
    cfg, rank = trainer.cfg, trainer.dist_env.rank
    reporter = StepReporter(trainer, run_dir, rank, resume_step=start_step or None)
    ckpt = cfg.checkpoint
    policy = SavePolicy(ckpt.every_steps, ckpt.every_minutes, ckpt.save_at_end, trainer.total_steps)
    policy.install_signal_handlers(stop_signals=stop_signals)
    if on_policy is not None:
        on_policy(policy)
    saver = CheckpointHook(trainer, run_dir, policy, ckpt.keep_last, ckpt.milestone_every)
    if not (cfg.eval.pretrain_val_every_epochs or cfg.eval.health_every_steps):
        return [reporter, saver], reporter, saver
    evaluation = EvaluationHook(
        PretrainEvaluator(trainer), reporter.metrics, trainer.iterations_per_epoch, policy
    )
    if start_step:
        evaluation.resume(run_dir, start_step)
    best = evaluation.mark_best(saver, run_dir, rank)
    return [reporter, evaluation, saver, best], reporter, saver
