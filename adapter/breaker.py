"""Circuit breaker toward userli: after ``threshold`` consecutive outage-like failures, stop
calling userli for ``cooldown`` seconds, then let exactly one probe through (half-open).

While userli is down, every lookup would otherwise wait for the full USERLI_TIMEOUT, and Postfix
processes pile up behind those waits. With the breaker open, lookups are answered at once (from
stale cache, or TEMP). Pure logic with an injectable clock; the caller records each outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(IntEnum):
    CLOSED = 0  # calls flow
    HALF_OPEN = 1  # one probe call is under way
    OPEN = 2  # calls are refused until the cooldown is over


class CircuitBreaker:
    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] = lambda state: None,
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_until = 0.0

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """May a call go to userli now? In OPEN past the cooldown, the first caller becomes the probe."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._set(BreakerState.HALF_OPEN)
            return True
        return False

    def record(self, success: bool) -> None:
        """The outcome of a call that ``allow`` let through."""
        if success:
            self._failures = 0
            if self._state is not BreakerState.CLOSED:
                self._set(BreakerState.CLOSED)
            return
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown
            if self._state is not BreakerState.OPEN:
                self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        self._state = state
        self._on_change(state)
