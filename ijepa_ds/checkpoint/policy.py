"""When to save: every N steps, every M minutes, at the end, and on request (signals).

The decision is collective: every rank contributes its local reasons (a signal may reach one
rank only; the clock is read on each) and one all-reduce makes all ranks agree, so they all
enter the save together at the same step boundary.
"""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist

from ijepa_ds.distributed import all_reduce_cpu

SAVE_SIGNALS = (signal.SIGUSR1,)


class SavePolicy:
    """Collective save/stop decisions at optimizer-step boundaries.

    Args:
        every_steps: save when ``step % every_steps == 0`` (0 = off).
        every_minutes: save when this much wall time passed since the last save (0 = off).
        save_at_end: save after the last step.
        total_steps: the run's last step.
        clock: seconds, injectable for tests.
    """

    def __init__(
        self,
        every_steps: int,
        every_minutes: float,
        save_at_end: bool,
        total_steps: int,
        clock=time.monotonic,
    ):
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60.0
        self.save_at_end = save_at_end
        self.total_steps = total_steps
        self.clock = clock
        self.last_save = clock()
        self.save_requested = False
        self.stop_requested = False

    def install_signal_handlers(self, signals=SAVE_SIGNALS) -> None:
        """SIGUSR1: save at the next step boundary and carry on."""
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.save_requested = True

    def request_save(self) -> None:
        """Save at the next step boundary and carry on (e.g. a new best held-out loss)."""
        self.save_requested = True

    def request_stop(self) -> None:
        """Save at the next step boundary, then stop (preemption, time limit)."""
        self.save_requested = True
        self.stop_requested = True

    def decide(self, step: int) -> tuple[str | None, bool]:
        """(reason to save now or None, stop after it) -- identical on every rank."""
        local = torch.tensor(
            [
                float(bool(self.every_steps) and step % self.every_steps == 0),
                float(
                    bool(self.every_seconds) and self.clock() - self.last_save >= self.every_seconds
                ),
                float(self.save_requested),
                float(self.stop_requested),
                float(self.save_at_end and step >= self.total_steps),
            ]
        )
        all_reduce_cpu(local, op=dist.ReduceOp.MAX)
        names = ("every_steps", "every_minutes", "requested", "stop", "end")
        reasons = [name for name, flag in zip(names, local.tolist()) if flag]
        stop = bool(local[3])
        if not reasons:
            return None, False
        self.last_save = self.clock()
        self.save_requested = self.stop_requested = False
        return "+".join(reasons), stop
