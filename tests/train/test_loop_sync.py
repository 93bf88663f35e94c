"""The loop's host synchronisation, in a real 2-rank run (torchrun, gloo, CPU).

- ``loss.on_nonfinite=stop``: exactly one all-reduce issued by ijepa-ds per optimizer step,
  with gradient accumulation 2 and 1; the per-step loss it yields is the mean of every rank's
  micro-batch losses.
- ``loss.on_nonfinite=skip``: one check per micro-batch plus the per-step reduce (plus one for
  the zero-weight stand-in of a dropped micro-batch).
- A NaN in micro-batch 1 of 2 (on rank 1 only) stops the run at that step's boundary, before
  any update: student and EMA target are bit-identical to the previous step, for ZeRO 0-3.

Run as a script under torchrun it is the worker (``argv[1]``: the JSON file rank 0 writes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
POISONED = 21  # rank 1, micro-batch 0 of optimizer step 2 (global batch 16, 4 per rank)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tests.helpers import assert_ok, torchrun

    out = tmp_path_factory.mktemp("loop_sync") / "results.json"
    assert_ok(torchrun(2, Path(__file__), str(out)))
    return json.loads(out.read_text())


def test_one_all_reduce_per_step_with_accumulation(results):
    assert results["stop_accum2"]["accumulation"] == 2
    assert results["stop_accum2"]["per_step"] == [1, 1, 1]


def test_one_all_reduce_per_step_without_accumulation(results):
    assert results["stop_accum1"]["accumulation"] == 1
    assert results["stop_accum1"]["per_step"] == [1, 1]


def test_micro_step_alone_is_a_whole_step(results):
    assert results["single"] == {"all_reduces": 1, "applied": True, "global_steps": 1}


@pytest.mark.parametrize("run", ["stop_accum2", "stop_accum1"])
def test_step_loss_is_the_mean_over_ranks_and_micro_batches(results, run):
    r = results[run]
    assert r["losses"] == pytest.approx(r["expected_losses"], rel=1e-6)


def test_skip_mode_checks_each_micro_batch(results):
    r = results["skip_accum2"]
    assert r["per_step"] == [3, 4]  # 2 checks + 1 reduce; step 2 also checks its stand-in
    assert r["dropped"] == [0, 2]  # the poisoned micro-batch is dropped on both ranks


def test_all_reduce_on_device_sums_over_ranks(results):
    assert results["reduced"] == [3.0, 1.0]


@pytest.mark.parametrize("stage", ["0", "1", "2", "3"])
def test_nan_in_first_micro_batch_stops_before_the_update(results, stage):
    r = results["nan_stop"][stage]
    assert "optimizer step 2" in r["error"]
    assert r["student_changed_by"] == 0.0 and r["target_changed_by"] == 0.0
    assert r["global_steps"] == 1
    assert r["micro_steps"] == 4  # the boundary micro-batch ran: one check per step, not per micro


# ---- worker (runs under torchrun) ----


class AllReduceCounter:
    """Wraps ``torch.distributed.all_reduce``; counts the calls made by ijepa-ds code (not by
    DeepSpeed's own gradient and norm collectives)."""

    def __init__(self):
        import torch.distributed as dist

        self.calls, self.original = 0, dist.all_reduce
        dist.all_reduce = self

    def __call__(self, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("ijepa_ds."):
            self.calls += 1
        return self.original(*args, **kwargs)


def _poison(position: int | None) -> None:
    from ijepa_ds.data import loader as data_loader

    cls = data_loader.PositionDataset
    original = getattr(cls, "_unpoisoned", cls.__getitem__)
    cls._unpoisoned = original

    def getitem(self, p):
        img, label, p = original(self, p)
        return (img.new_full(img.shape, float("nan")) if p == position else img), label, p

    cls.__getitem__ = getitem


def _trainer(env, *extra: str):
    from ijepa_ds.backend.ds_config import build_ds_config
    from ijepa_ds.config import load_config
    from ijepa_ds.train.trainer import build_trainer
    from tests.train.equivalence_worker import OVERRIDES

    keys = {e.split("=")[0] for e in extra}
    base = [o for o in OVERRIDES if o.split("=")[0] not in keys]
    cfg = load_config("fmnist_tiny", base + list(extra))
    return build_trainer(cfg, env, build_ds_config(cfg, env.world_size))


def count_run(env, counter, *extra: str) -> dict:
    """Train a few steps; all-reduces issued per step and each rank's micro-batch losses."""
    import torch.distributed as dist

    from ijepa_ds.train import loop

    trainer = _trainer(env, *extra)
    marks, dropped, micro_losses = [counter.calls], [], []
    compute = loop.compute_loss

    def recording(*args, **kwargs):
        loss, h = compute(*args, **kwargs)
        micro_losses.append(loss.item())
        return loss, h

    def hook(step, info, tensors):
        marks.append(counter.calls)
        dropped.append(info["dropped_micro_batches"])

    loop.compute_loss = recording
    try:
        losses = loop.train_loop(trainer, 0, hooks=[hook])
    finally:
        loop.compute_loss = compute
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, micro_losses)
    accum = trainer.accumulation
    # (skip mode also computes the blank stand-in's loss: the means below then do not apply)
    per_step = [[x for ranks in gathered for x in ranks[s * accum : (s + 1) * accum]]
                for s in range(len(losses))]  # fmt: skip
    return {
        "accumulation": accum,
        "per_step": [b - a for a, b in zip(marks, marks[1:])],
        "dropped": dropped,
        "losses": losses,
        "expected_losses": [sum(xs) / len(xs) for xs in per_step],
    }


def single_micro_step(env, counter) -> dict:
    """``micro_step`` called alone, as the benchmarks call it (no ``stats``, accumulation 1)."""
    from ijepa_ds.train import loop
    from ijepa_ds.train.trainer import build_loader

    trainer = _trainer(env, "data.global_batch_size=8")
    batch = next(iter(build_loader(trainer, 0)))
    before = counter.calls
    loop.micro_step(trainer, batch, 0)
    return {
        "all_reduces": counter.calls - before,
        "applied": trainer.engine.step_applied(),
        "global_steps": trainer.engine.ds.global_steps,
    }


def _max_change(before: dict, after: dict) -> float:
    return max((before[n] - after[n]).abs().max().item() for n in before)


def nan_stop_run(env, stage: int) -> dict:
    """Poisoned micro-batch 1 of step 2: the error, and how much anything moved since step 1."""
    from ijepa_ds.observability.nonfinite import NonFiniteLossError
    from ijepa_ds.train import loop
    from tests.train.run_helpers import gathered_params

    trainer = _trainer(env, f"deepspeed.config=zero{stage}")
    snapshot, calls = {}, [0]
    original = loop.micro_step

    def counting(*args):
        calls[0] += 1
        return original(*args)

    def hook(step, info, tensors):
        snapshot["student"] = gathered_params(trainer.engine.module)
        snapshot["target"] = gathered_params(trainer.target.module)

    loop.micro_step = counting
    try:
        loop.train_loop(trainer, 0, hooks=[hook])
        error = ""
    except NonFiniteLossError as err:
        error = str(err)
    finally:
        loop.micro_step = original
    student, target = gathered_params(trainer.engine.module), gathered_params(trainer.target.module)
    return {
        "error": error,
        "micro_steps": calls[0],
        "global_steps": trainer.engine.ds.global_steps,
        "student_changed_by": _max_change(snapshot["student"], student),
        "target_changed_by": _max_change(snapshot["target"], target),
    }


def main(out: str) -> None:
    import torch

    from ijepa_ds.backend.comm import init_distributed, shutdown_distributed
    from ijepa_ds.distributed import all_reduce_on_device, detect_dist_env

    env = detect_dist_env()
    init_distributed(env)
    counter = AllReduceCounter()
    result: dict = {"reduced": all_reduce_on_device(torch.tensor([env.rank + 1.0, 0.5])).tolist()}
    _poison(None)
    result["stop_accum2"] = count_run(env, counter)
    result["stop_accum1"] = count_run(
        env, counter, "data.global_batch_size=8", "schedule.max_steps=2"
    )
    result["single"] = single_micro_step(env, counter)
    _poison(POISONED)
    result["skip_accum2"] = count_run(
        env, counter, "loss.on_nonfinite=skip", "schedule.max_steps=2"
    )
    result["nan_stop"] = {stage: nan_stop_run(env, stage) for stage in (0, 1, 2, 3)}
    if env.rank == 0:
        Path(out).write_text(json.dumps(result, indent=1))
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
