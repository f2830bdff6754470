"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

from adapter.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3, cooldown: float = 5.0) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock, changes = Clock(), []
    return CircuitBreaker(threshold, cooldown, clock, changes.append), clock, changes


def test_opens_after_threshold_consecutive_failures() -> None:
    cb, _, changes = breaker(threshold=3)
    for _ in range(2):
        assert cb.allow()
        cb.record(False)
    assert cb.state is BreakerState.CLOSED
    assert cb.allow()
    cb.record(False)
    assert cb.state is BreakerState.OPEN
    assert not cb.allow()
    assert changes == [BreakerState.OPEN]


def test_a_success_resets_the_count() -> None:
    cb, _, _ = breaker(threshold=3)
    for outcome in (False, False, True, False, False):
        assert cb.allow()
        cb.record(outcome)
    assert cb.state is BreakerState.CLOSED


def test_one_probe_after_the_cooldown_then_closed_on_success() -> None:
    cb, clock, changes = breaker(threshold=1, cooldown=5)
    cb.allow()
    cb.record(False)
    clock.now += 4.9
    assert not cb.allow()
    clock.now += 0.2
    assert cb.allow()  # the probe
    assert cb.state is BreakerState.HALF_OPEN
    assert not cb.allow()  # only one probe at a time
    cb.record(True)
    assert cb.state is BreakerState.CLOSED
    assert cb.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_opens_again_for_a_full_cooldown() -> None:
    cb, clock, _ = breaker(threshold=5, cooldown=5)
    for _ in range(5):
        cb.allow()
        cb.record(False)
    clock.now += 5
    assert cb.allow()
    cb.record(False)  # a single failed probe re-opens, whatever the threshold
    assert cb.state is BreakerState.OPEN
    clock.now += 4.9
    assert not cb.allow()
    clock.now += 0.1
    assert cb.allow()
