"""``SavePolicy.decide`` on one process: which reasons save, when the run stops, the clock."""

from __future__ import annotations

import signal

import pytest

from ijepa_ds.checkpoint.policy import SavePolicy

pytestmark = pytest.mark.fast


class Clock:
    """A settable clock in seconds (``SavePolicy`` reads it through ``clock``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _decisions(policy: SavePolicy, steps) -> dict[int, tuple[str | None, bool]]:
    return {step: policy.decide(step) for step in steps}


def test_every_steps_and_the_end_save_and_nothing_else_does():
    policy = SavePolicy(every_steps=3, every_minutes=0, save_at_end=True, total_steps=7)
    saved = {s: d for s, d in _decisions(policy, range(1, 8)).items() if d[0]}
    assert saved == {3: ("every_steps", False), 6: ("every_steps", False), 7: ("end", False)}
    quiet = SavePolicy(every_steps=0, every_minutes=0, save_at_end=False, total_steps=7)
    assert all(d == (None, False) for d in _decisions(quiet, range(1, 8)).values())


def test_every_minutes_counts_from_the_last_save_of_any_kind():
    clock = Clock()
    policy = SavePolicy(every_steps=4, every_minutes=1, save_at_end=False, total_steps=99,
                        clock=clock)  # fmt: skip
    clock.now = 59.0
    assert policy.decide(1) == (None, False)
    clock.now = 60.0
    assert policy.decide(2) == ("every_minutes", False)
    clock.now = 110.0
    assert policy.decide(4) == ("every_steps", False)  # resets the minute clock
    clock.now = 169.0
    assert policy.decide(5) == (None, False)
    clock.now = 170.0
    assert policy.decide(6) == ("every_minutes", False)


def test_requests_save_once_and_a_stop_request_stops():
    policy = SavePolicy(every_steps=0, every_minutes=0, save_at_end=False, total_steps=9)
    policy.request_save()
    assert policy.decide(1) == ("requested", False)
    assert policy.decide(2) == (None, False)
    policy.request_stop()
    assert policy.decide(3) == ("requested+stop", True)
    assert policy.decide(4) == (None, False)  # the request is consumed


def test_a_stop_signal_names_itself_and_marks_an_early_stop():
    policy = SavePolicy(every_steps=0, every_minutes=0, save_at_end=True, total_steps=5)
    policy._on_stop_signal(signal.SIGTERM, None)
    assert policy.decide(2) == ("SIGTERM", True) and policy.stopped_by == "SIGTERM"
    late = SavePolicy(every_steps=0, every_minutes=0, save_at_end=True, total_steps=5)
    late._on_stop_signal(signal.SIGINT, None)
    assert late.decide(5) == ("end+SIGINT", True) and late.stopped_by is None  # a normal end
