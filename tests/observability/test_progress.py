"""ProgressMeter: line format, smoothing window, warm-up exclusion and ETA arithmetic."""

from __future__ import annotations

import re

import pytest

from ijepa_ds.observability.progress import ProgressMeter, format_eta


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _update(meter: ProgressMeter, step: int, **overrides: float) -> None:
    values = dict(loss=0.41234, lr=3.2e-4, wd=0.0412, momentum=0.99621, epoch=1)
    values.update(overrides)
    meter.update(step, **values)


def test_line_format_and_eta_from_fake_clock() -> None:
    clock = FakeClock()
    meter = ProgressMeter(2000, world_size=2, global_batch_size=128, clock=clock, warmup_steps=2)
    # Two warm-up steps of 10 s each must not count; then 118 steps of 0.16 s, 0.002 s data.
    for step in range(1, 121):
        clock.now += 10.0 if step <= 2 else 0.16
        meter.update(step, 0.41234, 3.2e-4, 0.0412, 0.99621, 1, data_time=0.0021)
    assert meter.step_time == pytest.approx(0.16)
    assert meter.images_per_sec == pytest.approx(800.0)
    assert meter.images_per_sec_per_rank == pytest.approx(400.0)
    assert meter.eta_seconds == pytest.approx(0.16 * 1880)  # 300.8 s
    assert meter.format_line() == (
        "step 120/2000 | ep 1 | loss 0.4123 | lr 3.2e-04 | wd 0.041 | m 0.9962 | "
        "800 img/s (400/rank) | data 2.1 ms | step 160 ms | ETA 0:05:01"
    )


def test_explicit_step_time_overrides_clock_and_window_smooths() -> None:
    clock = FakeClock()  # never advanced: all timing must come from step_time
    meter = ProgressMeter(100, 1, 32, clock=clock, window=4, warmup_steps=0)
    for step, t in enumerate([9.0, 1.0, 2.0, 3.0, 4.0], start=1):
        _update(meter, step, step_time=t, data_time=t / 10)
    # Window of 4 keeps the last four: mean 2.5 s; the 9 s step has left the window.
    assert meter.step_time == pytest.approx(2.5)
    assert meter.data_time == pytest.approx(0.25)
    assert meter.images_per_sec == pytest.approx(32 / 2.5)
    assert meter.eta_seconds == pytest.approx(2.5 * 95)
    line = meter.format_line()
    assert "12.8 img/s (12.8/rank)" in line
    assert line.endswith("| data 250.0 ms | step 2500 ms | ETA 0:03:58")


def test_warmup_shows_placeholders_then_rates() -> None:
    clock = FakeClock()
    meter = ProgressMeter(10, 1, 8, clock=clock, warmup_steps=3)
    for step in (1, 2, 3):
        clock.now += 1.0
        _update(meter, step)
        assert meter.format_line().endswith(
            "-- img/s (--/rank) | data -- ms | step -- ms | ETA --:--:--"
        )
        assert meter.eta_seconds is None and meter.scalars() == {}
    clock.now += 0.5
    _update(meter, 4)
    assert meter.eta_seconds == pytest.approx(0.5 * 6)
    assert meter.scalars()["perf/img_per_s"] == pytest.approx(16.0)


def test_restart_clock_excludes_pause_between_steps() -> None:
    clock = FakeClock()
    meter = ProgressMeter(10, 1, 8, clock=clock, warmup_steps=0)
    clock.now += 1.0
    _update(meter, 1)
    clock.now += 60.0  # e.g. a checkpoint save
    meter.restart_clock()
    clock.now += 1.0
    _update(meter, 2)
    assert meter.step_time == pytest.approx(1.0)


def test_warmup_counts_updates_not_absolute_steps_on_resume() -> None:
    clock = FakeClock()
    meter = ProgressMeter(2000, 1, 8, clock=clock, warmup_steps=1)
    clock.now += 30.0
    _update(meter, 1001)  # first step after resume: warm-up
    clock.now += 0.2
    _update(meter, 1002)
    assert meter.step_time == pytest.approx(0.2)
    assert meter.eta_seconds == pytest.approx(0.2 * 998)
    assert re.match(r"step 1002/2000 \| ep 1 \| ", meter.format_line())


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00:00"), (59.4, "0:00:59"), (291, "0:04:51"), (3600, "1:00:00"), (97491, "27:04:51")],
)
def test_format_eta(seconds: float, text: str) -> None:
    assert format_eta(seconds) == text


def test_rejects_bad_arguments_and_early_format() -> None:
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        ProgressMeter(10, 0, 8)
    with pytest.raises(RuntimeError, match="before any update"):
        ProgressMeter(10, 1, 8).format_line()
