"""A real Postfix smtpd asks the adapter's policy server at end of data (smtplib as the client)."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from typing import Any

import pytest
from helpers import StartAdapter

pytestmark = pytest.mark.postfix

MESSAGE = "From: user@example.org\r\nTo: friend@example.net\r\nSubject: hello\r\n\r\nHello.\r\n"


def send(port: int, sender: str) -> None:
    # A fresh SMTP session per message: after an end-of-data rejection Postfix keeps the
    # transaction open (503 nested MAIL).
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(sender, ["friend@example.net"], MESSAGE)


@pytest.fixture
def smtpd_port(start_adapter: StartAdapter, start_postfix: Callable[..., Any]) -> Callable[..., int]:
    """Start the adapter (with config overrides) and a Postfix smtpd asking its policy server."""

    def start(**overrides: Any) -> int:
        adapter = start_adapter(**overrides)
        policy = f"check_policy_service inet:127.0.0.1:{adapter.policy_port}"
        return int(start_postfix({"smtpd_end_of_data_restrictions": policy}).smtp_port)

    return start


def test_message_over_quota_is_refused(smtpd_port: Callable[..., int]) -> None:
    port = smtpd_port()  # user@example.org may send 3 per hour (the stub's data set)
    for _ in range(3):
        send(port, "user@example.org")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(port, "user@example.org")
    assert refused.value.smtp_code == 554
    assert b"Rate limit exceeded, please try again later" in refused.value.smtp_error
    send(port, "other@example.org")  # another sender is not affected


def test_configured_action_and_text(smtpd_port: Callable[..., int]) -> None:
    port = smtpd_port(rate_limit_action="DEFER", rate_limit_message="Slow down, please")
    for _ in range(3):
        send(port, "user@example.org")
    with pytest.raises(smtplib.SMTPDataError) as deferred:
        send(port, "user@example.org")
    assert deferred.value.smtp_code == 450  # temporary: the sender's server retries later
    assert b"Slow down, please" in deferred.value.smtp_error


def test_userli_down_lets_mail_through(smtpd_port: Callable[..., int], userli: Any) -> None:
    port = smtpd_port()
    userli.stop()
    for _ in range(5):
        send(port, "user@example.org")  # fail-open: no quota, no refusal
