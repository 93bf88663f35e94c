"""SavePolicy's stop signals: SIGTERM/SIGINT become a collective save-and-stop, a repeat
within the grace time is the same request, a later one kills the process at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from ijepa_ds.checkpoint.policy import REPEAT_GRACE_S, SavePolicy
from tests.helpers import cpu_env

# Installs the handlers, then reports each new stop signal it sees ("stop 15").
LOOP = """
import time
from ijepa_ds.checkpoint.policy import SavePolicy
policy = SavePolicy(0, 0, False, 10)
policy.install_signal_handlers()
print("ready", flush=True)
seen = 0
while True:
    if policy.stop_signal != seen:
        seen = policy.stop_signal
        print("stop", seen, flush=True)
    time.sleep(0.01)
"""


def _policy() -> SavePolicy:
    return SavePolicy(every_steps=0, every_minutes=0, save_at_end=True, total_steps=10)


def test_stop_signal_saves_and_stops_at_the_next_boundary():
    policy = _policy()
    policy._on_stop_signal(signal.SIGTERM, None)
    assert policy.decide(3) == ("SIGTERM", True)
    assert policy.stopped_by == "SIGTERM"


def test_stop_signal_during_the_last_step_is_a_normal_end():
    policy = _policy()
    policy._on_stop_signal(signal.SIGINT, None)
    assert policy.decide(10) == ("end+SIGINT", True)
    assert policy.stopped_by is None  # the run is complete: nothing to resume


def test_handlers_are_restored_and_stop_signals_can_be_left_alone():
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    before = [signal.getsignal(s) for s in signals]
    policy = _policy()
    policy.install_signal_handlers(stop_signals=())  # what the submitit job asks for
    assert [signal.getsignal(s) for s in signals[:2]] == before[:2]
    policy.install_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) == policy._on_stop_signal
    policy.restore_signal_handlers()
    assert [signal.getsignal(s) for s in signals] == before


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=_policy().install_signal_handlers)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) == before


def test_repeat_within_the_grace_time_is_absorbed_a_later_one_exits_at_once():
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP], env=cpu_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        first = time.monotonic()
        assert proc.stdout.readline() == "stop 15\n"
        proc.send_signal(signal.SIGTERM)  # torchrun forwarding the same request
        time.sleep(0.5)
        assert proc.poll() is None
        time.sleep(max(0.0, first + REPEAT_GRACE_S + 0.2 - time.monotonic()))
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert proc.wait(10) == -signal.SIGTERM
        assert time.monotonic() - sent < 2.0
        assert "second SIGTERM: exiting now without saving" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
