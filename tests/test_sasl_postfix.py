"""A real Postfix smtpd authenticates SMTP clients through the adapter (smtpd_sasl_type = dovecot)."""

from __future__ import annotations

import grp
import pwd
import smtplib
from collections.abc import Callable
from typing import Any

import pytest
from helpers import StartAdapter, UserliStub

from adapter.config import ListenAddress

pytestmark = pytest.mark.postfix


def sasl_postfix(start_postfix: Callable[..., Any], sasl_path: str) -> int:
    postfix = start_postfix(
        {"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot", "smtpd_sasl_path": sasl_path}
    )
    return int(postfix.smtp_port)


def login(port: int, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        assert mechanism in smtp.esmtp_features["auth"].split()  # Postfix offers what the adapter announced
        smtp.esmtp_features["auth"] = mechanism  # make smtplib use this mechanism
        try:
            code, text = smtp.login(user, password)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, exc.smtp_error
        return code, text


@pytest.fixture
def smtp_port(start_adapter: StartAdapter, start_postfix: Callable[..., Any]) -> int:
    adapter = start_adapter(sasl_address=ListenAddress(host="127.0.0.1", port=0), sasl_failure_delay=0.1)
    return sasl_postfix(start_postfix, f"inet:127.0.0.1:{adapter.service.sasl.bound.port}")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_right_password(smtp_port: int, mechanism: str) -> None:
    assert login(smtp_port, mechanism, "user@example.org", "correct horse")[0] == 235


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_wrong_password(smtp_port: int, mechanism: str) -> None:
    assert login(smtp_port, mechanism, "user@example.org", "wrong")[0] == 535


def test_disabled_user(smtp_port: int) -> None:
    code, text = login(smtp_port, "PLAIN", "spammer@example.org", "pw")
    assert (code, text) == (535, b"5.7.8 Error: authentication failed: user disabled due to spam role")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_userli_down_is_454_so_the_client_retries(smtp_port: int, userli: UserliStub, mechanism: str) -> None:
    userli.stop()
    code, text = login(smtp_port, mechanism, "user@example.org", "correct horse")
    assert code == 454
    assert b"4.7.0" in text


def test_unix_socket_in_postfix_private_dir(start_adapter: StartAdapter, start_postfix: Callable[..., Any]) -> None:
    # The chroot-friendly layout: smtpd_sasl_path = private/userli-auth, relative to the queue
    # directory, and the socket owned by postfix with mode 0660, as the README recommends.
    postfix = start_postfix(
        {"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot", "smtpd_sasl_path": "private/userli-auth"}
    )
    start_adapter(
        sasl_address=ListenAddress(path=str(postfix.private_dir / "userli-auth")),
        sasl_socket_mode=0o660,
        sasl_socket_owner=pwd.getpwnam("postfix").pw_uid,
        sasl_socket_group=grp.getgrnam("postfix").gr_gid,
    )
    assert login(postfix.smtp_port, "PLAIN", "user@example.org", "correct horse")[0] == 235
    assert login(postfix.smtp_port, "LOGIN", "user@example.org", "wrong")[0] == 535
