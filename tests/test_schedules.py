"""Schedules reproduce the reference schedulers exactly (fixture) and behave at the ends."""

import math

import pytest

from ijepa_ds.schedules import Schedule


def _schedule(ipe=10, epochs=2, warmup_epochs=1, ipe_scale=1.0, **kw):
    values = dict(
        start_lr=2e-4,
        lr=1e-3,
        final_lr=1e-6,
        weight_decay=0.04,
        final_weight_decay=0.4,
        momentum_start=0.996,
        momentum_end=1.0,
    )
    values.update(kw)
    return Schedule.from_epochs(ipe, epochs, warmup_epochs, ipe_scale, **values)


def test_reproduces_reference_train_steps_exactly(reference_expected):
    s = reference_expected["schedule"]
    sched = Schedule.from_epochs(
        s["ipe"],
        s["epochs"],
        s["warmup_epochs"],
        1.0,
        start_lr=s["start_lr"],
        lr=s["lr"],
        final_lr=s["final_lr"],
        weight_decay=s["wd"],
        final_weight_decay=s["final_wd"],
        momentum_start=s["ema"][0],
        momentum_end=s["ema"][1],
    )
    for step, ref in enumerate(reference_expected["train_steps"]):
        assert sched.lr_at(step) == ref["lr"]
        assert sched.wd_at(step) == ref["wd"]
        assert sched.momentum_at(step) == ref["momentum"]


def test_lr_warmup_peak_and_floor():
    sched = _schedule()
    assert sched.lr_at(0) == pytest.approx(2e-4 + 0.1 * 8e-4)
    assert sched.lr_at(9) == pytest.approx(1e-3)  # warmup ends at the 10th step
    assert sched.lr_at(19) == pytest.approx(1e-6)
    assert sched.lr_at(500) == pytest.approx(1e-6)  # past the end: floor, never negative
    lrs = [sched.lr_at(i) for i in range(9, 20)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_wd_cosine_and_clamp():
    sched = _schedule()
    assert sched.wd_at(19) == pytest.approx(0.4)
    assert sched.wd_at(1000) == pytest.approx(0.4)
    mid = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert sched.wd_at(9) == pytest.approx(mid)
    decreasing = _schedule(weight_decay=0.4, final_weight_decay=0.04)
    assert decreasing.wd_at(1000) == pytest.approx(0.04)


def test_momentum_linear_with_ipe_scale():
    sched = _schedule(ipe_scale=1.25)
    assert sched.total_steps == 25
    assert sched.momentum_at(0) == 0.996
    assert sched.momentum_at(25) == pytest.approx(1.0)
    assert sched.momentum_at(400) == pytest.approx(1.0)  # held past the end, never above
    odd = _schedule(ipe=3, epochs=1, ipe_scale=1.5)  # 4.5 steps: reference divides by the float
    assert odd.momentum_at(1) == pytest.approx(0.996 + 0.004 / 4.5)


def test_pure_function_of_step():
    a, b = _schedule(), _schedule()
    for step in [7, 3, 15, 0]:
        assert (a.lr_at(step), a.wd_at(step), a.momentum_at(step)) == (
            b.lr_at(step),
            b.wd_at(step),
            b.momentum_at(step),
        )


pytestmark = pytest.mark.fast  # in-process: part of `python -m pytest -m fast`
