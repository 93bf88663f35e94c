"""One fixed-format progress line with smoothed timings, throughput and ETA.

    step 120/2000 | ep 1 | loss 0.4123 | lr 3.2e-04 | wd 0.041 | m 0.9962 | 812 img/s (406/rank)
    | data 2.1 ms | step 155 ms | ETA 0:04:51

(printed as one line). Timings are the mean over the last ``window`` steps, so one slow step
(a checkpoint, a garbage collection) does not swing the ETA. The first ``warmup_steps`` updates
after the meter starts are left out of the timings: they include compilation, allocator growth
and the first data-loader fill, and would make the rate and ETA pessimistic for a long while.
Until a timed step exists the timing fields read ``--``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepRecord:
    """The values reported by the latest ``ProgressMeter.update`` call."""

    step: int
    epoch: int
    loss: float
    lr: float
    wd: float
    momentum: float


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` with unbounded hours (``27:04:51`` for a run longer than a day)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _format_rate(value: float) -> str:
    # Whole images per second on real hardware; one decimal keeps tiny CPU runs readable.
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


class ProgressMeter:
    """Tracks step and data-loading times and formats the progress line.

    Args:
        total_steps: optimizer steps in the whole run (the ``/2000`` of the line).
        world_size: number of data-parallel ranks, for the per-rank throughput.
        global_batch_size: images consumed per optimizer step summed over all ranks.
        clock: seconds as a float; used to time steps when ``update`` gets no ``step_time``.
        window: number of recent steps averaged for timings, throughput and ETA.
        warmup_steps: updates after construction whose timings are ignored.
    """

    def __init__(
        self,
        total_steps: int,
        world_size: int,
        global_batch_size: int,
        clock: Callable[[], float] = time.perf_counter,
        window: int = 20,
        warmup_steps: int = 3,
    ) -> None:
        for name, value, low in (
            ("total_steps", total_steps, 1),
            ("world_size", world_size, 1),
            ("global_batch_size", global_batch_size, 1),
            ("window", window, 1),
            ("warmup_steps", warmup_steps, 0),
        ):
            if value < low:
                raise ValueError(f"ProgressMeter: {name} must be >= {low}, got {value}")
        self.total_steps = total_steps
        self.world_size = world_size
        self.global_batch_size = global_batch_size
        self.warmup_steps = warmup_steps
        self._clock = clock
        self._last_tick = clock()
        self._updates = 0
        self._step_times: deque[float] = deque(maxlen=window)
        self._data_times: deque[float] = deque(maxlen=window)
        self.last: StepRecord | None = None

    def update(
        self,
        step: int,
        loss: float,
        lr: float,
        wd: float,
        momentum: float,
        epoch: int,
        step_time: float | None = None,
        data_time: float = 0.0,
    ) -> None:
        """Record one optimizer step.

        Args:
            step: optimizer steps completed including this one (1 after the first step), so
                ``total_steps - step`` steps remain.
            loss, lr, wd, momentum, epoch: values shown on the line (lr/wd of the first group,
                EMA momentum used for this step).
            step_time: seconds the whole step took (data included); when None, the time since
                the previous ``update`` (or construction / ``restart_clock``) on ``clock``.
            data_time: seconds of that step spent waiting for the data loader.
        """
        now = self._clock()
        measured = now - self._last_tick
        self._last_tick = now
        self._updates += 1
        self.last = StepRecord(step, epoch, float(loss), float(lr), float(wd), float(momentum))
        if self._updates <= self.warmup_steps:
            return
        self._step_times.append(measured if step_time is None else float(step_time))
        self._data_times.append(float(data_time))

    def restart_clock(self) -> None:
        """Start timing the next step from now, e.g. after an evaluation or a checkpoint save,
        whose duration must not be counted as a training step."""
        self._last_tick = self._clock()

    @property
    def step_time(self) -> float | None:
        """Mean step time in seconds over the window; None before the first timed step."""
        return _mean(self._step_times)

    @property
    def data_time(self) -> float | None:
        """Mean data-loading time in seconds over the window; None before the first timed step."""
        return _mean(self._data_times)

    @property
    def images_per_sec(self) -> float | None:
        """Global throughput (all ranks) from the smoothed step time."""
        mean = self.step_time
        return None if mean is None or mean <= 0 else self.global_batch_size / mean

    @property
    def images_per_sec_per_rank(self) -> float | None:
        rate = self.images_per_sec
        return None if rate is None else rate / self.world_size

    @property
    def eta_seconds(self) -> float | None:
        """Smoothed step time times the steps left after the last recorded step."""
        mean = self.step_time
        if mean is None or self.last is None:
            return None
        return mean * max(0, self.total_steps - self.last.step)

    def scalars(self) -> dict[str, float]:
        """Timing values ready for ``MetricsWriter.log_scalars`` (empty during warm-up)."""
        if self.step_time is None:
            return {}
        out = {"perf/step_time_s": self.step_time, "perf/data_time_s": self.data_time or 0.0}
        if self.images_per_sec is not None:
            out["perf/img_per_s"] = self.images_per_sec
            out["perf/img_per_s_per_rank"] = self.images_per_sec_per_rank or 0.0
        return out

    def format_line(self) -> str:
        """The progress line for the last recorded step (raises before any ``update``)."""
        if self.last is None:
            raise RuntimeError("ProgressMeter.format_line called before any update")
        r = self.last
        fields = [
            f"step {r.step}/{self.total_steps}",
            f"ep {r.epoch}",
            f"loss {r.loss:.4f}",
            f"lr {r.lr:.1e}",
            f"wd {r.wd:.3f}",
            f"m {r.momentum:.4f}",
        ]
        rate, per_rank = self.images_per_sec, self.images_per_sec_per_rank
        if rate is None or per_rank is None:
            fields += ["-- img/s (--/rank)", "data -- ms", "step -- ms", "ETA --:--:--"]
        else:
            fields += [
                f"{_format_rate(rate)} img/s ({_format_rate(per_rank)}/rank)",
                f"data {1000 * (self.data_time or 0.0):.1f} ms",
                f"step {1000 * (self.step_time or 0.0):.0f} ms",
                f"ETA {format_eta(self.eta_seconds or 0.0)}",
            ]
        return " | ".join(fields)


def _mean(values: deque[float]) -> float | None:
    if not values:
        return None
    return math.fsum(values) / len(values)
