"""userli health log lines: an outage once, a new reason when it appears, recoveries; flaps counted."""

from __future__ import annotations

import logging

import pytest

from adapter.failure_log import FailureLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> FailureLog:
    return FailureLog(logging.getLogger("adapter.test"), "userli", window=60, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(r.levelname, r.getMessage(), getattr(r, "reason", "")) for r in caplog.records]


def test_an_outage_is_one_line_and_its_end_another(health: FailureLog, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        for _ in range(1000):
            health.failed("userli status 500")
        health.answered()
        health.answered()
    assert lines(caplog) == [
        ("WARNING", "userli is failing", "userli status 500"),
        ("INFO", "userli recovered", ""),
    ]
    assert caplog.records[1].failed_calls == 1000


def test_a_new_reason_is_news(health: FailureLog, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """500s, then a token rotation: the 401s are another problem and must be seen, as an error."""
    with caplog.at_level(logging.INFO):
        health.failed("userli status 500")
        clock.now += 5
        health.failed("userli rejected the API token", config_error=True, hint="check USERLI_TOKEN")
        health.failed("userli status 500")  # back and forth within one outage: each reason once
        health.failed("userli rejected the API token", config_error=True)
    assert lines(caplog) == [
        ("WARNING", "userli is failing", "userli status 500"),
        ("ERROR", "userli fails differently now", "userli rejected the API token"),
    ]
    assert caplog.records[1].hint == "check USERLI_TOKEN"
    assert health.config_error == "userli rejected the API token"  # for /ready, while it lasts
    health.failed("userli status 500")
    assert health.config_error is None
    health.failed("userli rejected the API token", config_error=True)
    health.answered()
    assert health.config_error is None


def test_flapping_writes_one_pair_per_minute_with_counts(
    health: FailureLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        for _ in range(120):  # a flap a second for two minutes
            health.failed("userli timeout")
            clock.now += 0.5
            health.answered()
            clock.now += 0.5
    messages = [message for _, message, _ in lines(caplog)]
    assert messages == ["userli is failing", "userli recovered"] * 2
    assert caplog.records[2].outages_not_logged == 59  # the flaps between the two reports


def test_a_new_reason_during_a_quiet_minute_is_still_reported(
    health: FailureLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        health.failed("userli status 500")
        health.answered()
        clock.now += 10
        health.failed("userli status 500")  # a flap: quiet
        health.answered()
        clock.now += 10
        health.failed("userli API token lacks the postfix scope", config_error=True)
    assert lines(caplog)[-1] == ("ERROR", "userli is failing", "userli API token lacks the postfix scope")
    assert caplog.records[-1].outages_not_logged == 1
