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


def test_message_over_quota_is_refused(start_adapter: StartAdapter, start_postfix: Callable[..., Any]) -> None:
    adapter = start_adapter()  # user@example.org may send 3 per hour (the stub's data set)
    postfix = start_postfix(
        {"smtpd_end_of_data_restrictions": f"check_policy_service inet:127.0.0.1:{adapter.policy_port}"}
    )
    for _ in range(3):
        send(postfix.smtp_port, "user@example.org")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(postfix.smtp_port, "user@example.org")
    assert refused.value.smtp_code == 554
    assert b"Rate limit exceeded, please try again later" in refused.value.smtp_error
    send(postfix.smtp_port, "other@example.org")  # another sender is not affected


def test_configured_action_and_text(start_adapter: StartAdapter, start_postfix: Callable[..., Any]) -> None:
    adapter = start_adapter(rate_limit_action="DEFER", rate_limit_message="Slow down, please")
    postfix = start_postfix(
        {"smtpd_end_of_data_restrictions": f"check_policy_service inet:127.0.0.1:{adapter.policy_port}"}
    )
    for _ in range(3):
        send(postfix.smtp_port, "user@example.org")
    with pytest.raises(smtplib.SMTPDataError) as deferred:
        send(postfix.smtp_port, "user@example.org")
    assert deferred.value.smtp_code == 450  # temporary: the sender's server retries later
    assert b"Slow down, please" in deferred.value.smtp_error


def test_userli_down_lets_mail_through(
    start_adapter: StartAdapter, start_postfix: Callable[..., Any], userli: Any
) -> None:
    adapter = start_adapter()
    postfix = start_postfix(
        {"smtpd_end_of_data_restrictions": f"check_policy_service inet:127.0.0.1:{adapter.policy_port}"}
    )
    userli.stop()
    for _ in range(5):
        send(postfix.smtp_port, "user@example.org")  # fail-open: no quota, no refusal
