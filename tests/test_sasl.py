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
        (401, {"message": "authentication failed"}, b"FAIL\t1\treason=authentication failed\tuser=user@example.org\n"),
        (403, {"message": "user disabled due to spam role"}, b"FAIL\t1\treason=user disabled due to spam role\t"),
        (403, {"message": "user password change required"}, b"FAIL\t1\treason=user password change required\t"),
        (401, {"message": "tab\there"}, b"FAIL\t1\treason=authentication failed\t"),  # not printable: replaced
    ],
)
def test_refusals_are_permanent_failures(httpx_mock: HTTPXMock, status: int, body: Any, reply: bytes) -> None:
    httpx_mock.add_response(url=AUTH_URL, method="POST", status_code=status, json=body)
    replies, metrics = answer([verify(mechanism="LOGIN")])
    assert replies[0] is not None and replies[0].startswith(reply)
    assert replies[0].endswith(b"\tuser=user@example.org\n")  # Postfix logs it as sasl_username
    assert auth_total(metrics, "LOGIN", "invalid_credentials") == 1


@pytest.mark.parametrize(
    ("status", "body", "logged"),
    [
        (401, {"error": "Invalid API token"}, "userli rejected the API token"),
        (401, {"error": "No API token provided"}, "userli rejected the API token"),
        (403, {"error": {"message": "Token does not have required scope: postfix", "code": 0}}, "lacks the postfix"),
        (404, {"error": {"message": "No route found", "code": 404}}, "userli has no auth route"),
    ],
)
def test_token_and_scope_errors_are_temporary_never_wrong_password(
    httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture, status: int, body: Any, logged: str
) -> None:
    """userli's error bodies are about the adapter's token, not the user's password: 454, not 535."""
    for _ in range(3):
        httpx_mock.add_response(url=AUTH_URL, method="POST", status_code=status, json=body)
    with caplog.at_level(logging.INFO):
        replies, metrics = answer([verify()] * 3, failure_delay=5.0)  # no failure delay either
    assert replies == [TEMP] * 3
    assert auth_total(metrics, "PLAIN", "error") == 3
    assert auth_total(metrics, "PLAIN", "invalid_credentials") == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and logged in errors[0].reason and errors[0].hint  # once, naming the cause
    assert not [r for r in caplog.records if r.getMessage() == "authentication failed"]


@pytest.mark.parametrize(
    "response",
    [
        {"status_code": 500, "json": {"error": "x"}},
        {"status_code": 502, "content": b"<html>bad gateway</html>"},
        {"status_code": 404, "json": {"error": "no route"}},  # wrong base URL: not the user's fault
        {"status_code": 422, "json": {"error": {"message": "email: This value should not be blank."}}},
        {"status_code": 400, "json": {"error": {"message": "Invalid JSON"}}},
        {"status_code": 401, "json": {"message": "authentication failed", "error": "x"}},  # not a controller body
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


@pytest.mark.parametrize("user", ["nobody", "a@b@example.org", "user@[192.0.2.1]", "u/x@example.org"])
def test_impossible_logins_fail_without_asking_userli(user: str) -> None:
    replies, _ = answer([verify(user=user)])
    assert replies == [f"FAIL\t1\treason=authentication failed\tuser={user.lower()}\n".encode()]


@pytest.mark.parametrize(
    ("typed", "asked"),
    [
        ("First+Last@Example.org", "first+last@example.org"),  # admin-created: asked as typed
        ("user+tag@example.org", "user+tag@example.org"),  # never stripped: a login names an account
        ('"john"@example.org', "john@example.org"),
        ("Üser@example.org", "üser@example.org"),
    ],
)
def test_every_valid_address_is_asked(httpx_mock: HTTPXMock, typed: str, asked: str) -> None:
    httpx_mock.add_response(url=AUTH_URL, method="POST", json={"message": "success"})
    replies, _ = answer([verify(user=typed)])
    assert replies == [f"OK\t1\tuser={asked}\n".encode()]
    assert json.loads(httpx_mock.get_requests()[0].content)["email"] == asked


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
