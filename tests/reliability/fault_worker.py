"""Run under torchrun: the real trainer (``run_training``) with one fault injected for real.

argv: ``out_prefix run_root run_name fault resume [KEY=VALUE ...]``; ``resume`` is ``-`` for a
fresh run, ``auto``, or ``auto+fallback``. ``fault`` is one of

- ``none``;
- ``kill-step:R:S``: rank R sends itself SIGKILL in the middle of optimizer step S (after the
  forward pass, before ``engine.step``);
- ``hang-step:R:S``: rank R stops answering in the middle of step S (sleeps);
- ``kill-save:R:S``: rank R sends itself SIGKILL during the checkpoint save of step S, right
  after DeepSpeed wrote its first file;
- ``poison:P``: the sample at global position P has NaN pixels (a non-finite loss);
- ``pause-step:S:PATH``: every rank waits at the start of optimizer step S until the file
  PATH exists (a job that is alive, holding its run folder, for as long as a test needs).

Every rank that returns writes ``<out_prefix>.rank<R>.json``: the losses, the step the run
started at and its checkpoints, or the error it stopped with.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch

from ijepa_ds.backend.comm import shutdown_distributed
from ijepa_ds.checkpoint import saver
from ijepa_ds.data import loader as data_loader
from ijepa_ds.fileio import atomic_write_bytes
from ijepa_ds.train import loop
from ijepa_ds.train import main as train_main
from ijepa_ds.train.args import TrainArgs
from tests.train.equivalence_worker import OVERRIDES

BASE = [o for o in OVERRIDES if not o.startswith("schedule.max_steps")]


def _inject_step_fault(action: str, rank: int, step: int) -> None:
    original = loop.micro_step

    def faulty(trainer, batch, done, grad_norms=None):
        if trainer.dist_env.rank == rank and done + 1 == step:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)  # hang: alive but never reaching the next collective
        return original(trainer, batch, done, grad_norms)

    loop.micro_step = faulty


def _inject_pause(step: int, gate: str) -> None:
    original = loop.micro_step

    def paused(trainer, batch, done, grad_norms=None):
        while done + 1 == step and not os.path.exists(gate):
            time.sleep(0.1)
        return original(trainer, batch, done, grad_norms)

    loop.micro_step = paused


def _inject_save_fault(rank: int, step: int) -> None:
    original = saver.save_checkpoint

    def faulty(trainer, run_dir, done, reason):
        if trainer.dist_env.rank == rank and done == step:
            writer = trainer.engine.ds.checkpoint_engine
            write = writer.save

            def write_then_die(state_dict, path):
                write(state_dict, path)
                os.kill(os.getpid(), signal.SIGKILL)

            writer.save = write_then_die
        return original(trainer, run_dir, done, reason)

    saver.save_checkpoint = faulty


def _inject_poison(position: int) -> None:
    original = data_loader.PositionDataset.__getitem__

    def poisoned(self, p):
        img, label, p = original(self, p)
        return (torch.full_like(img, float("nan")) if p == position else img), label, p

    data_loader.PositionDataset.__getitem__ = poisoned


def main(out_prefix: str, run_root: str, run_name: str, fault: str, resume: str, *extra: str):
    kind, _, where = fault.partition(":")
    if kind in ("kill-step", "hang-step"):
        rank, step = map(int, where.split(":"))
        _inject_step_fault(kind.split("-")[0], rank, step)
    elif kind == "kill-save":
        _inject_save_fault(*map(int, where.split(":")))
    elif kind == "poison":
        _inject_poison(int(where))
    elif kind == "pause-step":
        step, gate = where.split(":", 1)
        _inject_pause(int(step), gate)
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")
    args = TrainArgs(
        config="fmnist_tiny",
        overrides=(*BASE, f"logging.output_dir={run_root}", f"logging.run_name={run_name}",
                   *extra),
        resume="" if resume == "-" else resume.split("+")[0],
        resume_fallback=resume.endswith("+fallback"),
    )  # fmt: skip
    rank = int(os.environ["RANK"])
    try:
        result = train_main.run_training(args)
    except Exception as err:  # noqa: BLE001 - the test inspects the message
        result = {"error": f"{type(err).__name__}: {err}"}
    # Atomic: torchrun may kill a surviving rank while it writes; a half file is never read.
    atomic_write_bytes(f"{out_prefix}.rank{rank}.json", json.dumps(result).encode())
    if "error" in result:
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:])
    shutdown_distributed()
