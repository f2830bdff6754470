"""End to end: a private Postfix asks the adapter for domains, mailboxes, aliases, sender logins,
SMTP AUTH and quotas, and delivers to local maildirs. Python's smtplib is the SMTP client.

Run alone with ``pytest -m e2e``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from helpers import SocketmapClient, netstring, wait_until
from mailstack import MailStack, SmtpError

pytestmark = [pytest.mark.e2e, pytest.mark.postfix]

GOOD_LOGIN = ("user@example.org", "correct horse")


@pytest.fixture(scope="module")
def stack(postfix_available: None) -> Iterator[MailStack]:
    mail = MailStack()
    yield mail
    mail.stop()


@pytest.fixture
def fresh_stack(postfix_available: None) -> Iterator[MailStack]:
    """A stack of its own, for tests that take userli or the adapter down."""
    mail = MailStack(cache_ttl=0.5, userli_timeout=1.0, breaker_threshold=1000)
    yield mail
    mail.stop()


def marker() -> str:
    return f"e2e-{uuid.uuid4().hex}"


def test_1_mail_to_an_existing_mailbox_lands_in_its_maildir(stack: MailStack) -> None:
    body = marker()
    stack.send("outsider@example.net", "user@example.org", body)
    assert "Delivered-To: user@example.org" in stack.delivered("user@example.org", body)


def test_2_unknown_mailbox_of_a_hosted_domain_is_550(stack: MailStack) -> None:
    with pytest.raises(SmtpError) as refused:
        stack.send("outsider@example.net", "nobody@example.org", marker())
    assert refused.value.code == 550
    assert b"User unknown in virtual mailbox table" in refused.value.text


def test_3_alias_lands_in_the_destination_maildir(stack: MailStack) -> None:
    body = marker()
    stack.send("outsider@example.net", "alias@example.org", body)
    assert stack.delivered("user@example.org", body)


def test_3_address_extension_reaches_the_user(stack: MailStack) -> None:
    body = marker()
    stack.send("outsider@example.net", "user+newsletter@example.org", body)
    assert "Delivered-To: user+newsletter@example.org" in stack.delivered("user@example.org", body)


def test_3_alias_to_several_destinations(stack: MailStack) -> None:
    body = marker()
    stack.send("outsider@example.net", "team@example.org", body)
    assert stack.delivered("user@example.org", body)
    assert stack.delivered("other@example.org", body)


def test_4_domain_not_hosted_is_refused_as_relaying(stack: MailStack) -> None:
    with pytest.raises(SmtpError) as refused:
        stack.send("outsider@example.net", "someone@elsewhere.example", marker())
    assert refused.value.code == 554
    assert b"Relay access denied" in refused.value.text


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_5_smtp_auth(stack: MailStack, mechanism: str) -> None:
    assert stack.login("user@example.org", "correct horse", mechanism) == 235
    assert stack.login("user@example.org", "wrong", mechanism) == 535


def test_5_authenticated_users_may_relay(stack: MailStack) -> None:
    stack.send("user@example.org", "friend@elsewhere.example", marker(), login=GOOD_LOGIN)  # accepted


def test_6_sending_as_an_address_one_does_not_own_is_refused(stack: MailStack) -> None:
    with pytest.raises(SmtpError) as refused:
        stack.send("other@example.org", "user@example.org", marker(), login=GOOD_LOGIN)
    assert refused.value.code == 553
    assert b"not owned by user user@example.org" in refused.value.text


@pytest.mark.parametrize("sender", ["user@example.org", "alias@example.org"])
def test_6_sending_as_own_or_alias_address_is_accepted(stack: MailStack, sender: str) -> None:
    body = marker()
    stack.send(sender, "other@example.org", body, login=GOOD_LOGIN)
    assert stack.delivered("other@example.org", body)


def test_7_rate_limit(stack: MailStack) -> None:
    login = ("limited@example.org", "limited pass")
    for _ in range(2):  # limited@ may send 2 per hour
        stack.send("limited@example.org", "user@example.org", marker(), login=login)
    with pytest.raises(SmtpError) as refused:
        stack.send("limited@example.org", "user@example.org", marker(), login=login)
    assert refused.value.code == 554
    assert b"Rate limit exceeded, please try again later" in refused.value.text


def test_8_userli_down_cold_cache_defers_never_bounces(fresh_stack: MailStack) -> None:
    fresh_stack.userli.stop()
    for recipient in ("user@example.org", "nobody@example.org", "alias@example.org"):
        with pytest.raises(SmtpError) as deferred:
            fresh_stack.send("outsider@example.net", recipient, marker())
        assert 400 <= deferred.value.code < 500, (recipient, deferred.value.code, deferred.value.text)


def test_8_userli_down_warm_cache_known_recipients_accepted(fresh_stack: MailStack) -> None:
    fresh_stack.send("outsider@example.net", "user@example.org", marker())  # warms the cache
    wait_until(lambda: "user@example.org" in fresh_stack.mailboxes())
    fresh_stack.userli.stop()
    body = marker()
    fresh_stack.send("outsider@example.net", "user@example.org", body)  # stale answers keep mail flowing
    assert fresh_stack.delivered("user@example.org", body)
    with pytest.raises(SmtpError) as deferred:
        fresh_stack.send("outsider@example.net", "other@example.org", marker())  # never seen: deferred
    assert 400 <= deferred.value.code < 500


def test_5_userli_down_auth_is_454(fresh_stack: MailStack) -> None:
    fresh_stack.userli.stop()
    assert fresh_stack.login("user@example.org", "correct horse", "PLAIN") == 454


def test_5_first_login_after_a_temporary_failure_succeeds(fresh_stack: MailStack) -> None:
    """smtpd keeps its auth connection; after a graceful close it would send its next AUTH into
    the dead socket and answer 454 once more although userli is back (Postfix 3.7)."""
    assert fresh_stack.login(*GOOD_LOGIN, "PLAIN") == 235
    fresh_stack.userli.behaviour = lambda endpoint, key: (500, b'{"error":{"message":"boom"}}')
    assert fresh_stack.login(*GOOD_LOGIN, "PLAIN") == 454
    fresh_stack.userli.behaviour = None
    assert fresh_stack.login(*GOOD_LOGIN, "PLAIN") == 235
    assert fresh_stack.login(*GOOD_LOGIN, "LOGIN") == 235


def test_5_wrong_adapter_token_is_454_never_535(fresh_stack: MailStack) -> None:
    """A token userli rejects, or one without the postfix scope, is the adapter's problem: users
    must not be told their (good) password is wrong."""
    fresh_stack.userli.token = "rotated-token"  # userli no longer knows the adapter's token
    assert fresh_stack.login(*GOOD_LOGIN, "PLAIN") == 454
    assert fresh_stack.login("user@example.org", "wrong", "PLAIN") == 454  # not even this is a 535
    fresh_stack.userli.token = fresh_stack.config.userli_token
    fresh_stack.userli.scopes = {"dovecot"}  # a known token, without the postfix scope
    assert fresh_stack.login(*GOOD_LOGIN, "LOGIN") == 454
    fresh_stack.userli.scopes = {"postfix"}
    assert fresh_stack.login(*GOOD_LOGIN, "PLAIN") == 235


def test_2_mail_to_an_admin_created_address_is_delivered(stack: MailStack) -> None:
    """first+last@ exists in userli (created by an admin): 250 and delivered, never 550."""
    body = marker()
    stack.send("outsider@example.net", "First+Last@example.org", body)
    assert stack.delivered("first+last@example.org", body)
    sender_body = marker()
    stack.send(
        "first+last@example.org", "user@example.org", sender_body, login=("first+last@example.org", "admin made me")
    )
    assert stack.delivered("user@example.org", sender_body)


def test_9_userli_slow_defers_and_the_adapter_stays_responsive(fresh_stack: MailStack) -> None:
    release = threading.Event()
    fresh_stack.userli.behaviour = lambda m, k: (release.wait(10), None)[1] if "slow" in k else None
    outcome: list[int] = []

    def slow_recipient() -> None:
        try:
            fresh_stack.send("outsider@example.net", "slow@example.org", marker())
        except SmtpError as exc:
            outcome.append(exc.code)

    sender = threading.Thread(target=slow_recipient)
    sender.start()
    wait_until(lambda: any("slow" in path for path in fresh_stack.userli.paths()))
    with SocketmapClient(fresh_stack.adapter.socketmap_port) as other:  # meanwhile, others are served
        assert other.query("mailbox", "user@example.org") == "OK 1"
    sender.join(30)
    release.set()
    assert outcome and 400 <= outcome[0] < 500  # USERLI_TIMEOUT (1 s) passed: deferred


def test_10_adapter_restarted_while_postfix_holds_connections(fresh_stack: MailStack) -> None:
    body = marker()
    fresh_stack.send("outsider@example.net", "user@example.org", body)
    assert fresh_stack.delivered("user@example.org", body)
    fresh_stack.restart_adapter()  # Postfix processes still hold connections to the old one
    for _ in range(3):
        body = marker()
        fresh_stack.send("outsider@example.net", "user@example.org", body)
        assert fresh_stack.delivered("user@example.org", body)
    with SocketmapClient(fresh_stack.adapter.socketmap_port) as client:
        client.send(netstring(b"domain example.org"))
        assert client.read_reply() == "OK 1"
