"""Log lines about userli's health that tell news, never noise.

An operator wants to read "userli is failing: <reason>" once when an outage starts, a line when
its reason changes (500s, then 401s after a token rotation is a new problem), and "userli
recovered" when it ends. A flapping userli must not write a line per flap, so each reason is
reported at most once per ``window`` (one minute): outages whose reason was reported in that
window pass silently, their start and recovery both, and are counted in the next line that is
written. Configuration problems (a token userli rejects, a missing scope or route) are errors;
outage-like failures are warnings.

Pure logic with an injectable clock; one instance per route family (lookups, quota, auth), so
a missing quota route does not flap with healthy lookups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["FailureLog"]

REPORT_WINDOW = 60.0  # a reason is reported at most once per this many seconds


class FailureLog:
    def __init__(
        self,
        logger: logging.Logger,
        what: str = "userli",
        window: float = REPORT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._window = window
        self._clock = clock
        self._reported: dict[str, float] = {}  # reason -> when it was last written
        self._failing_since: float | None = None
        self._reasons: set[str] = set()  # reasons seen in the outage under way
        self._outage_reported = False  # whether this outage wrote a line (so its end does too)
        self._failures = 0  # failed calls in the outage under way
        self._silent_outages = 0  # outages since the last line that wrote nothing
        self.config_error: str | None = None  # the reason, while userli refuses our configuration

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    def failed(self, reason: str, config_error: bool = False, hint: str = "") -> None:
        now = self._clock()
        self.config_error = reason if config_error else None
        if self._failing_since is None:
            self._failing_since = now
            self._reasons.clear()
            self._outage_reported = False
            self._failures = 0
        self._failures += 1
        if reason in self._reasons:
            return
        self._reasons.add(reason)
        last = self._reported.get(reason)
        if last is not None and now - last < self._window:
            return  # reported a moment ago: a flap, counted instead
        self._reported[reason] = now
        extra: dict[str, object] = {"reason": reason}
        if hint:
            extra["hint"] = hint
        if self._silent_outages:
            extra["outages_not_logged"] = self._silent_outages
            self._silent_outages = 0
        message = f"{self._what} is failing" if not self._outage_reported else f"{self._what} fails differently now"
        self._log.log(logging.ERROR if config_error else logging.WARNING, message, extra=extra)
        self._outage_reported = True

    def answered(self) -> None:
        self.config_error = None
        if self._failing_since is None:
            return
        if self._outage_reported:
            self._log.info(
                f"{self._what} recovered",
                extra={"failed_calls": self._failures, "seconds": round(self._clock() - self._failing_since, 1)},
            )
        else:
            self._silent_outages += 1
        self._failing_since = None
        if len(self._reported) > 64:  # reasons are a small fixed set; keep it that way
            now = self._clock()
            self._reported = {r: t for r, t in self._reported.items() if now - t < self._window}
