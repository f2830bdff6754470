"""Authentication outcomes: userli's answers (pytest-httpx) to OK, FAIL or FAIL temp; fail-closed."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
from helpers import config_for
from pytest_httpx import HTTPXMock

from adapter.lookups import MAP_NAMES
from adapter.metrics import Metrics
from adapter.protocols.dovecot_auth import Event, Rejected, Verify
from adapter.sasl import Authenticator
from adapter.userli import ENDPOINTS, UserliClient

BASE = "http://userli.test"
AUTH_URL = f"{BASE}/api/postfix/auth"
TEMP = None  # a temporary failure is answered by closing the connection: Postfix then says 454


def answer(events: list[Event], failure_delay: float = 0.0, timeout: float = 2.0) -> tuple[list[bytes | None], Metrics]:
    metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)

    async def run() -> list[bytes | None]:
        client = UserliClient.from_config(config_for(BASE), metrics)
        try:
            authenticator = Authenticator(client, metrics, timeout=timeout, failure_delay=failure_delay)
            return [await authenticator.answer(event) for event in events]
        finally:
            await client.aclose()

    return asyncio.run(run()), metrics


def verify(user: str = "User@Example.org", password: str = "s3cret pass", mechanism: str = "PLAIN") -> Verify:
    return Verify("1", mechanism, user, password)


def auth_total(metrics: Metrics, mechanism: str, result: str) -> float:
    labels = {"mechanism": mechanism, "result": result}
    return metrics.registry.get_sample_value("userli_postfix_adapter_sasl_auth_total", labels) or 0.0


def test_success_answers_ok_with_the_canonical_address(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=AUTH_URL, method="POST", json={"message": "success"})
    replies, metrics = answer([verify()])
    assert replies == [b"OK\t1\tuser=user@example.org\n"]
    request = httpx_mock.get_requests()[0]
    assert json.loads(request.content) == {"email": "user@example.org", "password": "s3cret pass"}
    assert auth_total(metrics, "PLAIN", "success") == 1


@pytest.mark.parametrize(
    ("status", "body", "reply"),
    [
        (401, {"message": "authentication failed"}, b"FAIL\t1\treason=authentication failed\n"),
        (403, {"message": "user disabled due to spam role"}, b"FAIL\t1\treason=user disabled due to spam role\n"),
        (403, {"message": "user password change required"}, b"FAIL\t1\treason=user password change required\n"),
        (422, {"detail": "invalid"}, b"FAIL\t1\treason=authentication failed\n"),
        (401, {"message": "tab\there"}, b"FAIL\t1\treason=authentication failed\n"),  # not printable: replaced
    ],
)
def test_refusals_are_permanent_failures(httpx_mock: HTTPXMock, status: int, body: Any, reply: bytes) -> None:
    httpx_mock.add_response(url=AUTH_URL, method="POST", status_code=status, json=body)
    replies, metrics = answer([verify(mechanism="LOGIN")])
    assert replies == [reply]
    assert auth_total(metrics, "LOGIN", "invalid_credentials") == 1


@pytest.mark.parametrize(
    "response",
    [
        {"status_code": 500, "json": {"error": "x"}},
        {"status_code": 502, "content": b"<html>bad gateway</html>"},
        {"status_code": 404, "json": {"error": "no route"}},  # wrong base URL: not the user's fault
        {"status_code": 200, "content": b"<html>maintenance</html>"},  # fail-closed: no OK without "success"
        {"status_code": 200, "json": {"message": "nope"}},
        {"status_code": 200, "json": ["success"]},
        {"status_code": 200, "json": True},
    ],
)
def test_anything_else_is_a_temporary_failure_never_ok(httpx_mock: HTTPXMock, response: dict[str, Any]) -> None:
    httpx_mock.add_response(url=AUTH_URL, method="POST", **response)
    replies, metrics = answer([verify()])
    assert replies == [TEMP]
    assert auth_total(metrics, "PLAIN", "error") == 1


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("x")]
)
def test_transport_errors_are_temporary(httpx_mock: HTTPXMock, exc: Exception) -> None:
    httpx_mock.add_exception(exc)
    assert answer([verify()])[0] == [TEMP]


def test_deadline_well_inside_postfix_timeout(httpx_mock: HTTPXMock) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"message": "success"})

    httpx_mock.add_callback(slow)
    started = time.monotonic()
    assert answer([verify()], timeout=0.3)[0] == [TEMP]
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "user", ["", "nobody", "a@b@example.org", "user@[192.0.2.1]", "Üser@example.org", "u/x@example.org"]
)
def test_impossible_logins_fail_without_asking_userli(user: str) -> None:
    replies, _ = answer([verify(user=user)])
    assert replies == [b"FAIL\t1\treason=authentication failed\n"]


def test_protocol_rejections_are_counted_and_failed() -> None:
    replies, metrics = answer([Rejected("7", "PLAIN", "Invalid base64 data"), Rejected("8", "other", "Unsupported")])
    assert replies == [b"FAIL\t7\treason=Invalid base64 data\n", b"FAIL\t8\treason=Unsupported\n"]
    assert auth_total(metrics, "PLAIN", "invalid_credentials") == 1
    assert auth_total(metrics, "other", "invalid_credentials") == 1


def test_failures_are_delayed_successes_are_not(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=AUTH_URL, method="POST", status_code=401, json={"message": "authentication failed"})
    httpx_mock.add_response(url=AUTH_URL, method="POST", json={"message": "success"})
    started = time.monotonic()
    answer([verify()], failure_delay=0.5)
    failed_after = time.monotonic() - started
    started = time.monotonic()
    answer([verify()], failure_delay=0.5)
    assert failed_after >= 0.5
    assert time.monotonic() - started < 0.5


def test_passwords_are_never_logged(httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture) -> None:
    httpx_mock.add_response(url=AUTH_URL, method="POST", status_code=401, json={"message": "authentication failed"})
    httpx_mock.add_response(url=AUTH_URL, method="POST", status_code=500, json={"error": "x"})
    httpx_mock.add_response(url=AUTH_URL, method="POST", json={"message": "success"})
    with caplog.at_level(logging.DEBUG):
        answer([verify(password="hunter2-secret")] * 3)
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "hunter2-secret" not in text
    failure = next(r for r in caplog.records if r.getMessage() == "authentication failed")
    assert failure.levelname == "INFO" and failure.user == "user@example.org"
