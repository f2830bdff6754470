"""The userli client: every HTTP outcome maps to Found, NotFound or Failure (pytest-httpx)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import httpx
import pytest
from helpers import TOKEN, config_for
from pytest_httpx import HTTPXMock

from adapter import __version__
from adapter.metrics import Metrics
from adapter.userli import ENDPOINTS, Failure, Found, NotFound, Outcome, UserliClient

BASE = "http://userli.test"
SCOPE_BODY = {"error": {"message": "Token does not have required scope: postfix", "code": 0}}
TOKEN_REJECTED = Failure("userli rejected the API token", transient=False)
NO_SCOPE = Failure("userli API token lacks the postfix scope", transient=False)
NO_ROUTE = Failure("userli has no such route", transient=False)


def lookup(map_name: str, key: str, timeout: float = 2.0) -> tuple[Outcome, Metrics]:
    metrics = Metrics(handlers=ENDPOINTS, endpoints=ENDPOINTS)

    async def run() -> Outcome:
        client = UserliClient.from_config(config_for(BASE, userli_timeout=timeout), metrics)
        try:
            return await client.lookup(map_name, key)
        finally:
            await client.aclose()

    return asyncio.run(run()), metrics


@pytest.mark.parametrize(
    ("map_name", "status", "body", "expected"),
    [
        ("alias", 200, ["a@example.org"], Found(("a@example.org",))),
        ("alias", 200, ["a@example.org", "b@example.org"], Found(("a@example.org", "b@example.org"))),
        ("alias", 200, [], NotFound()),
        ("senders", 200, ["u@example.org"], Found(("u@example.org",))),
        ("senders", 200, [], NotFound()),
        ("domain", 200, True, Found(("1",))),
        ("domain", 200, False, NotFound()),
        ("mailbox", 200, True, Found(("1",))),
        ("mailbox", 200, False, NotFound()),
        # wrong JSON types are failures, never "not found"
        ("alias", 200, True, Failure("userli sent unexpected data")),
        ("alias", 200, False, Failure("userli sent unexpected data")),
        ("alias", 200, None, Failure("userli sent unexpected data")),
        ("alias", 200, {"error": "x"}, Failure("userli sent unexpected data")),
        ("alias", 200, [1, 2], Failure("userli sent unexpected data")),
        ("alias", 200, [""], Failure("userli sent unexpected data")),
        ("alias", 200, "a@example.org", Failure("userli sent unexpected data")),
        ("domain", 200, [], Failure("userli sent unexpected data")),
        ("domain", 200, 1, Failure("userli sent unexpected data")),
        ("domain", 200, 0, Failure("userli sent unexpected data")),
        ("mailbox", 200, "true", Failure("userli sent unexpected data")),
        ("mailbox", 200, None, Failure("userli sent unexpected data")),
        # the status is checked before the body: an error status is a failure whatever it carries;
        # 5xx are outage-like (transient), other statuses are configuration errors
        ("alias", 500, [], Failure("userli status 500")),
        ("domain", 503, False, Failure("userli status 503")),
        # userli's real bodies: a token or scope problem is named as such (userli-api.md)
        ("alias", 401, {"error": "Invalid API token"}, TOKEN_REJECTED),
        ("domain", 401, {"error": "No API token provided"}, TOKEN_REJECTED),
        ("mailbox", 403, SCOPE_BODY, NO_SCOPE),
        ("mailbox", 403, {"error": "forbidden"}, Failure("userli refused the API token (403)", transient=False)),
        ("alias", 404, {"error": {"message": "No route found", "code": 404}}, NO_ROUTE),
        ("alias", 204, [], Failure("userli status 204", transient=False)),
        ("alias", 301, [], Failure("userli status 301", transient=False)),
    ],
)
def test_outcomes(httpx_mock: HTTPXMock, map_name: str, status: int, body: Any, expected: Outcome) -> None:
    httpx_mock.add_response(
        url=f"{BASE}/api/postfix/{map_name}/x@example.org", status_code=status, content=json.dumps(body).encode()
    )
    outcome, _ = lookup(map_name, "x@example.org")
    if isinstance(outcome, Failure):
        outcome = replace(outcome, hint="")  # hints are for the operator's log
    assert outcome == expected


@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b"[", b'["a"', b"\xff\xfe"])
def test_non_json_is_a_failure(httpx_mock: HTTPXMock, body: bytes) -> None:
    httpx_mock.add_response(url=f"{BASE}/api/postfix/alias/x@example.org", content=body)
    assert lookup("alias", "x@example.org")[0] == Failure("userli sent invalid JSON")


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("garbage"),
    ],
)
def test_transport_errors_are_failures(httpx_mock: HTTPXMock, exc: Exception) -> None:
    httpx_mock.add_exception(exc)
    outcome, metrics = lookup("mailbox", "x@example.org")
    assert outcome == Failure("userli unreachable")
    assert b'http_client_requests_total{endpoint="mailbox",status_code="error"} 1.0' in metrics.exposition()


@pytest.mark.parametrize("exc", [httpx.ConnectTimeout("slow"), httpx.ReadTimeout("slow"), httpx.PoolTimeout("full")])
def test_httpx_timeouts_are_failures(httpx_mock: HTTPXMock, exc: Exception) -> None:
    httpx_mock.add_exception(exc)
    assert lookup("alias", "x@example.org")[0] == Failure("userli timeout")


def test_overall_deadline(httpx_mock: HTTPXMock) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=True)

    httpx_mock.add_callback(slow)
    outcome, _ = lookup("domain", "example.org", timeout=0.2)
    assert outcome == Failure("userli timeout")


def test_request_headers(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=True)
    lookup("domain", "example.org")
    request = httpx_mock.get_requests()[0]
    assert request.method == "GET"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == f"userli-postfix-adapter/{__version__}"


@pytest.mark.parametrize(
    ("key", "raw_path"),
    [
        ("user@example.org", b"/api/postfix/alias/user@example.org"),
        ("a/b", b"/api/postfix/alias/a%2Fb"),
        ("a?x=1", b"/api/postfix/alias/a%3Fx%3D1"),
        ("a#frag", b"/api/postfix/alias/a%23frag"),
        ("a%2e", b"/api/postfix/alias/a%252e"),
        ("a b", b"/api/postfix/alias/a%20b"),
        ("a+b@x", b"/api/postfix/alias/a%2Bb@x"),
        ("bücher.de", b"/api/postfix/alias/b%C3%BCcher.de"),
    ],
)
def test_key_is_one_escaped_path_segment(httpx_mock: HTTPXMock, key: str, raw_path: bytes) -> None:
    # The client escapes whatever it is given; keys.py additionally keeps such keys from userli.
    httpx_mock.add_response(json=[])
    lookup("alias", key)
    request = httpx_mock.get_requests()[0]
    assert request.url.raw_path == raw_path
    assert request.url.host == "userli.test"


def test_base_url_with_a_path_prefix(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url="http://userli.test/prefix/api/postfix/domain/example.org", json=True)

    async def run() -> Outcome:
        metrics = Metrics(handlers=ENDPOINTS, endpoints=ENDPOINTS)
        client = UserliClient.from_config(config_for("http://userli.test/prefix"), metrics)
        try:
            return await client.lookup("domain", "example.org")
        finally:
            await client.aclose()

    assert asyncio.run(run()) == Found(("1",))


def test_metrics_count_by_endpoint_and_status(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(status_code=503, json={"error": "x"})
    _, metrics = lookup("senders", "x@example.org")
    text = metrics.exposition()
    assert b'http_client_requests_total{endpoint="senders",status_code="503"} 1.0' in text
    assert b"x@example.org" not in text


@pytest.mark.parametrize(
    ("status", "label"), [(401, "401"), (503, "503"), (418, "4xx"), (299, "2xx"), (599, "5xx"), (103, "1xx")]
)
def test_status_labels_are_a_fixed_set(httpx_mock: HTTPXMock, status: int, label: str) -> None:
    httpx_mock.add_response(status_code=status, json={"error": "x"})
    _, metrics = lookup("senders", "x@example.org")
    assert (
        f'http_client_requests_total{{endpoint="senders",status_code="{label}"}} 1.0'.encode() in metrics.exposition()
    )
