"""Policy decisions: which messages are checked, whose quota, fail-open, and the over-quota action
(userli's smtp_quota answered by pytest-httpx)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from helpers import config_for
from pytest_httpx import HTTPXMock

from adapter.config import Config
from adapter.lookups import MAP_NAMES
from adapter.metrics import Metrics
from adapter.policy import PolicyDecider, identity_candidates
from adapter.ratelimit import Decision, MemoryRateLimiter, RateLimitError
from adapter.userli import ENDPOINTS, Quota, UserliClient

BASE = "http://userli.test"
QUOTA_URL = f"{BASE}/api/postfix/smtp_quota/user@example.org"
EOM = {"request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "sender": "user@example.org"}


def config(**overrides: Any) -> Config:
    return replace(config_for(BASE), **overrides)


def decide(requests: list[dict[str, str]], cfg: Config | None = None, limiter: Any = None) -> tuple[list[str], Metrics]:
    metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)
    cfg = cfg or config()

    async def run() -> list[str]:
        client = UserliClient.from_config(cfg, metrics)
        decider = PolicyDecider(client, limiter or MemoryRateLimiter(), metrics, cfg)
        try:
            return [await decider.decide(r) for r in requests]
        finally:
            await client.aclose()

    return asyncio.run(run()), metrics


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(f"userli_postfix_adapter_{name}", labels or {}) or 0.0


@pytest.mark.parametrize("state", ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "VRFY", "ETRN", ""])
def test_only_end_of_message_is_checked(state: str) -> None:
    actions, metrics = decide([{**EOM, "protocol_state": state}])  # no HTTP call allowed
    assert actions == ["DUNNO"]
    assert sample(metrics, "policy_requests_total", {"stage": "skip", "action": "dunno"}) == 1


@pytest.mark.parametrize(
    ("attributes", "candidates"),
    [
        ({"sasl_username": "User@Example.org", "sender": "other@example.org"}, ("user@example.org",)),
        ({"sasl_username": "", "sender": "Sender@Example.org"}, ("sender@example.org",)),
        # Postfix's semantics: the full address first, userli decides (john-doe@ may be a user)
        ({"sender": "user+tag@example.org"}, ("user+tag@example.org", "user@example.org")),
        ({"sender": "john-doe@example.org"}, ("john-doe@example.org", "john@example.org")),
        ({"sender": '"user"@example.org'}, ("user@example.org",)),  # quoting changes nothing
        ({"sender": ""}, ()),  # bounces have the null sender
        ({}, ()),
        ({"sender": "not an address"}, ()),
        ({"sasl_username": "localuser"}, ()),
        ({"sender": "a@b@example.org"}, ()),
    ],
)
def test_identity_candidates(attributes: dict[str, str], candidates: tuple[str, ...]) -> None:
    assert identity_candidates(attributes, "+-") == candidates


def test_authenticated_only_ignores_the_envelope_sender() -> None:
    assert identity_candidates({"sender": "user@example.org"}, "", authenticated_only=True) == ()
    assert identity_candidates({"sasl_username": "u@example.org"}, "", authenticated_only=True) == ("u@example.org",)
    actions, metrics = decide([EOM], config(rate_limit_senders="authenticated"))  # no HTTP call allowed
    assert actions == ["DUNNO"]
    assert sample(metrics, "quota_checks_total", {"result": "no_identity"}) == 1


def quota_url(address: str) -> str:
    return f"{BASE}/api/postfix/smtp_quota/{quote(address, safe='@')}"


def test_a_user_whose_name_contains_the_delimiter_counts_as_itself(httpx_mock: HTTPXMock) -> None:
    """With POSTFIX_RECIPIENT_DELIMITER=-, john-doe@ must not share (or use up) john@'s quota."""
    httpx_mock.add_response(url=quota_url("john-doe@example.org"), json={"per_hour": 1, "per_day": 0})
    sender = {**EOM, "sender": "john-doe@example.org"}
    actions, _ = decide([sender, sender], config(recipient_delimiter="-"))
    assert actions == ["DUNNO", "REJECT Rate limit exceeded, please try again later"]
    assert {r.url.path for r in httpx_mock.get_requests()} == {"/api/postfix/smtp_quota/john-doe@example.org"}


def test_an_extension_counts_against_the_user(httpx_mock: HTTPXMock) -> None:
    """quota+1@ and quota+2@ are quota@ with a delimiter of +: one quota, not an escape from it."""
    httpx_mock.add_response(url=quota_url("quota+1@example.org"), status_code=404, json={"error": "User not found"})
    httpx_mock.add_response(url=quota_url("quota+2@example.org"), status_code=404, json={"error": "User not found"})
    httpx_mock.add_response(url=quota_url("quota@example.org"), json={"per_hour": 3, "per_day": 0})
    senders = [{**EOM, "sender": f"quota+{1 + i % 2}@example.org"} for i in range(6)]
    actions, metrics = decide(senders, config(recipient_delimiter="+"))
    assert actions == ["DUNNO"] * 3 + ["REJECT Rate limit exceeded, please try again later"] * 3
    assert sample(metrics, "quota_checks_total", {"result": "no_identity"}) == 0


def test_an_admin_created_plus_address_is_asked_about_without_a_delimiter(httpx_mock: HTTPXMock) -> None:
    """Without a delimiter quota+x@ is an address of its own: userli is asked, never "no identity"."""
    httpx_mock.add_response(url=quota_url("quota+x@example.org"), json={"per_hour": 3, "per_day": 0})
    actions, metrics = decide([{**EOM, "sender": "quota+x@example.org"}] * 6)
    assert actions == ["DUNNO"] * 3 + ["REJECT Rate limit exceeded, please try again later"] * 3
    assert sample(metrics, "quota_checks_total", {"result": "no_identity"}) == 0


def test_queue_id_is_in_the_log_line(httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 1, "per_day": 0})
    with caplog.at_level(logging.INFO, logger="adapter.policy"):
        decide([{**EOM, "queue_id": "4ABC123"}] * 2)
    exceeded = next(r for r in caplog.records if r.getMessage() == "sending quota exceeded")
    assert exceeded.queue_id == "4ABC123"


def test_no_identity_is_dunno_without_asking_userli() -> None:
    actions, metrics = decide([{**EOM, "sender": ""}])
    assert actions == ["DUNNO"]
    assert sample(metrics, "quota_checks_total", {"result": "no_identity"}) == 1


def test_quota_enforced_over_the_hour(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 3, "per_day": 100})
    actions, metrics = decide([EOM] * 5)
    assert actions == ["DUNNO"] * 3 + ["REJECT Rate limit exceeded, please try again later"] * 2
    assert sample(metrics, "quota_exceeded_total") == 2
    assert sample(metrics, "policy_requests_total", {"stage": "check", "action": "reject"}) == 2
    assert sample(metrics, "quota_checks_total", {"result": "within"}) == 3
    assert len(httpx_mock.get_requests()) == 1  # the quota is cached


def test_quota_cache_ttl_zero_asks_every_time(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 10, "per_day": 0}, is_reusable=True)
    decide([EOM] * 3, config(quota_cache_ttl=0))
    assert len(httpx_mock.get_requests()) == 3


@pytest.mark.parametrize(
    ("action", "message", "expected"),
    [
        ("REJECT", "Slow down", "REJECT Slow down"),
        ("DEFER", "Try later", "DEFER Try later"),
        ("DEFER_IF_PERMIT", "Try later", "DEFER_IF_PERMIT Try later"),
        ("450", "Too many messages", "450 Too many messages"),
        ("554", "Too many messages", "554 Too many messages"),
    ],
)
def test_over_quota_action(httpx_mock: HTTPXMock, action: str, message: str, expected: str) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 1, "per_day": 0})
    actions, _ = decide([EOM, EOM], config(rate_limit_action=action, rate_limit_message=message))
    assert actions == ["DUNNO", expected]


def test_recipients_mode_counts_recipients(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 100, "per_day": 0})
    big = {**EOM, "recipient_count": "500"}
    small = {**EOM, "recipient_count": "40"}
    actions, _ = decide([small, small, small, big], config(rate_limit_count="recipients"))
    assert actions[:2] == ["DUNNO", "DUNNO"]
    assert actions[2].startswith("REJECT")  # 80 + 40 > 100
    assert actions[3].startswith("REJECT")


def test_messages_mode_ignores_recipient_count(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 2, "per_day": 0})
    actions, _ = decide([{**EOM, "recipient_count": "500"}] * 2)
    assert actions == ["DUNNO", "DUNNO"]


def test_unlimited_quota_is_not_counted(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 0, "per_day": 0})
    actions, metrics = decide([EOM] * 20)
    assert actions == ["DUNNO"] * 20
    assert sample(metrics, "quota_checks_total", {"result": "unlimited"}) == 20


def test_unknown_user_is_dunno(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, status_code=404, json={"error": "User not found"})
    actions, metrics = decide([EOM])
    assert actions == ["DUNNO"]
    assert sample(metrics, "quota_checks_total", {"result": "unknown_user"}) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": 'No route found for "GET /api/postfix/smtp_quota/user@example.org"', "code": 404}},
        {"error": "Not Found"},
        "<html>404</html>",
    ],
)
def test_a_missing_quota_route_is_an_error_logged_once(
    httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture, body: Any
) -> None:
    """userli older than 6.2.0, or a wrong path prefix: rate limiting is off, and the operator is told."""
    httpx_mock.add_response(url=QUOTA_URL, status_code=404, json=body, is_reusable=True)
    with caplog.at_level(logging.INFO):
        actions, metrics = decide([EOM] * 5)
    assert actions == ["DUNNO"] * 5  # fail open, as before
    assert sample(metrics, "quota_checks_total", {"result": "error"}) == 5
    assert sample(metrics, "quota_checks_total", {"result": "unknown_user"}) == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].reason == "userli has no smtp_quota route" and "6.2.0" in errors[0].hint


@pytest.mark.parametrize(
    "answer",
    [
        {"status_code": 500, "json": {"error": "x"}},
        {"status_code": 401, "json": {"error": "Invalid API token"}},
        {"status_code": 403, "json": {"error": {"message": "Token does not have required scope: postfix"}}},
        {"status_code": 200, "content": b"<html>"},
        {"status_code": 200, "json": {"per_hour": "ten", "per_day": 0}},
        {"status_code": 200, "json": {"per_hour": -1, "per_day": 0}},
        {"status_code": 200, "json": {"per_hour": True, "per_day": 0}},
        {"status_code": 200, "json": {"per_day": 5}},
        {"status_code": 200, "json": [1, 2]},
    ],
)
def test_userli_trouble_fails_open(httpx_mock: HTTPXMock, answer: dict[str, Any]) -> None:
    httpx_mock.add_response(url=QUOTA_URL, **answer)
    actions, metrics = decide([EOM])
    assert actions == ["DUNNO"]
    assert sample(metrics, "quota_checks_total", {"result": "error"}) == 1
    assert sample(metrics, "policy_requests_total", {"stage": "check", "action": "error"}) == 1


def test_userli_timeout_fails_open(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("slow"))
    assert decide([EOM])[0] == ["DUNNO"]


def test_failed_quota_lookups_are_not_cached(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, status_code=500, json={"error": "x"})
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 1, "per_day": 0})
    actions, _ = decide([EOM, EOM, EOM])
    assert actions == ["DUNNO", "DUNNO", "REJECT Rate limit exceeded, please try again later"]


class BrokenLimiter:
    async def check(self, identity: str, quota: Quota, weight: int) -> Decision:
        raise RateLimitError("ConnectionError")


def test_store_failure_fails_open(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=QUOTA_URL, json={"per_hour": 1, "per_day": 0})
    actions, metrics = decide([EOM, EOM], limiter=BrokenLimiter())
    assert actions == ["DUNNO", "DUNNO"]
    assert sample(metrics, "ratelimit_backend_errors_total", {"operation": "check"}) == 2
