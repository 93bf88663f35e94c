"""When to save: every N steps, every M minutes, at the end, and on request (signals).

The decision is collective: every rank contributes its local reasons (a signal may reach one
rank only; the clock is read on each) and one all-reduce makes all ranks agree, so they all
enter the save together at the same step boundary.

Signals: ``SIGUSR1`` saves and carries on. ``SIGTERM`` and ``SIGINT`` (``scancel``, a
``timeout``, a container stop, Ctrl-C; torchrun forwards both to the ranks) save and stop;
the run then ends with ``stopped_by`` set. A repeat of a stop signal at least
``REPEAT_GRACE_S`` after the first kills the process at once, by that signal's default action,
without saving. Repeats within that time are the same request delivered twice, not a user's
second Ctrl-C: a terminal sends SIGINT to torchrun and the ranks alike, SLURM signals every
process of the step, and torchrun forwards what it gets to the ranks again.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch
import torch.distributed as dist

from ijepa_ds.distributed import all_reduce_cpu

SAVE_SIGNALS = (signal.SIGUSR1,)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_GRACE_S = 2.0


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
        self.stop_signal = 0  # the first stop signal this rank received (0: none)
        self.stopped_by: str | None = None  # agreed: the signal that stopped the run early
        self._first_stop = 0.0
        self._previous: dict = {}
        self._owner = os.getpid()

    def install_signal_handlers(self, signals=SAVE_SIGNALS, stop_signals=STOP_SIGNALS) -> None:
        """``signals`` (SIGUSR1): save at the next step boundary and carry on.
        ``stop_signals`` (SIGTERM, SIGINT): save there, then stop. Main thread only (Python
        runs handlers there); elsewhere nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            self._previous.setdefault(sig, signal.signal(sig, self._on_signal))
        for sig in stop_signals:
            self._previous.setdefault(sig, signal.signal(sig, self._on_stop_signal))

    def restore_signal_handlers(self) -> None:
        """Put back the handlers ``install_signal_handlers`` replaced."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        self.save_requested = True

    def _on_stop_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if not self.stop_signal:
            self.stop_signal, self._first_stop = signum, now
        elif now - self._first_stop >= REPEAT_GRACE_S:
            self._exit_now(signum)

    def _exit_now(self, signum: int) -> None:
        """Die by ``signum``'s default action (exit status 128 + signum), saving nothing."""
        if os.getpid() == self._owner:  # not from a forked DataLoader worker
            name = signal.Signals(signum).name
            os.write(2, f"ijepa-ds: second {name}: exiting now without saving\n".encode())
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def request_save(self) -> None:
        """Save at the next step boundary and carry on (e.g. a new best held-out loss)."""
        self.save_requested = True

    def request_stop(self) -> None:
        """Save at the next step boundary, then stop (preemption, time limit)."""
        self.save_requested = True
        self.stop_requested = True

    def decide(self, step: int) -> tuple[str | None, bool]:
        """(reason to save now or None, stop after it) -- identical on every rank.

        A stop signal on any rank makes the reason its name (``SIGTERM``) and, before the
        run's last step, sets ``stopped_by``.
        """
        local = torch.tensor(
            [
                float(bool(self.every_steps) and step % self.every_steps == 0),
                float(
                    bool(self.every_seconds) and self.clock() - self.last_save >= self.every_seconds
                ),
                float(self.save_requested),
                float(self.stop_requested),
                float(self.save_at_end and step >= self.total_steps),
                float(self.stop_signal),  # MAX over ranks: one signal number
            ]
        )
        all_reduce_cpu(local, op=dist.ReduceOp.MAX)
        names = ("every_steps", "every_minutes", "requested", "stop", "end")
        reasons = [name for name, flag in zip(names, local.tolist()) if flag]
        signum = int(local[5])
        if signum:
            reasons.append(signal.Signals(signum).name)
            if step < self.total_steps:
                self.stopped_by = signal.Signals(signum).name
        stop = bool(local[3]) or bool(signum)
        if not reasons:
            return None, False
        self.last_save = self.clock()
        self.save_requested = self.stop_requested = False
        return "+".join(reasons), stop
