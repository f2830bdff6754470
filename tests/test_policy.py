"""Policy decisions: which messages are checked, whose quota, fail-open, and the over-quota action
(userli's smtp_quota answered by pytest-httpx)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import pytest
from helpers import config_for
from pytest_httpx import HTTPXMock

from adapter.config import Config
from adapter.lookups import MAP_NAMES
from adapter.metrics import Metrics
from adapter.policy import PolicyDecider, identity_of
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
    ("attributes", "identity"),
    [
        ({"sasl_username": "User@Example.org", "sender": "other@example.org"}, "user@example.org"),
        ({"sasl_username": "", "sender": "Sender@Example.org"}, "sender@example.org"),
        ({"sender": "user+tag@example.org"}, "user@example.org"),  # extension stripped: one quota
        ({"sender": "user-tag@example.org"}, "user@example.org"),
        ({"sender": ""}, None),  # bounces have the null sender
        ({}, None),
        ({"sender": "not an address"}, None),
        ({"sasl_username": "localuser"}, None),
        ({"sender": "a@b@example.org"}, None),
    ],
)
def test_identity(attributes: dict[str, str], identity: str | None) -> None:
    assert identity_of(attributes, "+-") == identity


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
    "answer",
    [
        {"status_code": 500, "json": {"error": "x"}},
        {"status_code": 401, "json": {"error": "x"}},
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
