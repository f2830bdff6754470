"""Socketmap request -> reply, over the whole outcome table (userli answers from pytest-httpx)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from helpers import config_for, netstring
from pytest_httpx import HTTPXMock

from adapter.lookups import MAP_NAMES, Lookups
from adapter.metrics import Metrics
from adapter.userli import ENDPOINTS, UserliClient

BASE = "http://userli.test"


def answer(payload: bytes, delimiters: str = "") -> tuple[bytes, Metrics]:
    metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)

    async def run() -> bytes:
        client = UserliClient.from_config(config_for(BASE, userli_timeout=1.0, recipient_delimiter=delimiters), metrics)
        try:
            return await Lookups(client, metrics).answer(payload)
        finally:
            await client.aclose()

    return asyncio.run(run()), metrics


def url(map_name: str, key: str) -> str:
    return f"{BASE}/api/postfix/{map_name}/{quote(key, safe='@')}"


@pytest.mark.parametrize(
    ("request_payload", "map_name", "status", "body", "reply"),
    [
        (
            b"alias a@example.org",
            "alias",
            200,
            ["b@example.org", "c@example.org"],
            netstring(b"OK b@example.org,c@example.org"),
        ),
        (b"alias a@example.org", "alias", 200, [], netstring(b"NOTFOUND ")),
        (b"senders a@example.org", "senders", 200, ["a@example.org"], netstring(b"OK a@example.org")),
        (b"senders a@example.org", "senders", 200, [], netstring(b"NOTFOUND ")),
        (b"domain example.org", "domain", 200, True, netstring(b"OK 1")),
        (b"domain example.org", "domain", 200, False, netstring(b"NOTFOUND ")),
        (b"mailbox a@example.org", "mailbox", 200, True, netstring(b"OK 1")),
        (b"mailbox a@example.org", "mailbox", 200, False, netstring(b"NOTFOUND ")),
        (b"mailbox a@example.org", "mailbox", 500, {"error": "x"}, netstring(b"TEMP userli status 500")),
        (b"mailbox a@example.org", "mailbox", 500, False, netstring(b"TEMP userli status 500")),
        (
            b"alias a@example.org",
            "alias",
            401,
            {"error": "Invalid API token"},
            netstring(b"TEMP userli rejected the API token"),
        ),
        (
            b"alias a@example.org",
            "alias",
            403,
            {"error": {"message": "Token does not have required scope: postfix", "code": 0}},
            netstring(b"TEMP userli API token lacks the postfix scope"),
        ),
        (b"alias a@example.org", "alias", 200, False, netstring(b"TEMP userli sent unexpected data")),
        (b"domain example.org", "domain", 200, [], netstring(b"TEMP userli sent unexpected data")),
    ],
)
def test_outcome_table(
    httpx_mock: HTTPXMock, request_payload: bytes, map_name: str, status: int, body: Any, reply: bytes
) -> None:
    key = request_payload.split(b" ", 1)[1].decode()
    httpx_mock.add_response(url=url(map_name, key), status_code=status, json=body)
    assert answer(request_payload)[0] == reply


def test_non_json_is_temp(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(content=b"<html>", status_code=200)
    assert answer(b"alias a@example.org")[0] == netstring(b"TEMP userli sent invalid JSON")


def test_timeout_is_temp(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("slow"))
    assert answer(b"alias a@example.org")[0] == netstring(b"TEMP userli timeout")


def test_connection_refused_is_temp(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("refused"))
    assert answer(b"domain example.org")[0] == netstring(b"TEMP userli unreachable")


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        (b"nosuchmap a@example.org", netstring(b"PERM unknown map name")),
        (b"ALIAS a@example.org", netstring(b"PERM unknown map name")),
        (b"smtp_quota a@example.org", netstring(b"PERM unknown map name")),  # an endpoint, not a map
        (b"alias", netstring(b"PERM request without a key")),
        (b"", netstring(b"PERM unknown map name")),
        (b"\xff\xfe a@example.org", netstring(b"PERM unknown map name")),
    ],
)
def test_requests_we_cannot_serve_are_perm(payload: bytes, reply: bytes) -> None:
    assert answer(payload)[0] == reply  # no HTTP call: pytest-httpx fails the test on any request


def test_unknown_map_label_is_fixed() -> None:
    _, metrics = answer(b"attacker-chosen-name a@example.org")
    text = metrics.exposition()
    assert b'requests_total{handler="unknown",status="error"} 1.0' in text
    assert b"attacker-chosen-name" not in text


@pytest.mark.parametrize(
    "key", [b"", b" ", b"*", b"a@b@example.org", b"x@[192.0.2.1]", b'"a/b"@example.org', b"a/b@x.org", b".", b".."]
)
def test_impossible_keys_are_notfound_without_http(key: bytes) -> None:
    assert answer(b"alias " + key)[0] == netstring(b"NOTFOUND ")


def test_undecodable_key_is_notfound_without_http() -> None:
    assert answer(b"mailbox us\xffer@example.org")[0] == netstring(b"NOTFOUND ")


def test_key_is_canonicalised_before_the_call(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=url("alias", "user@example.org"), json=["x@example.org"])
    assert answer(b"alias  User@EXAMPLE.org\xe2\x80\x8b ")[0] == netstring(b"OK x@example.org")


def test_key_with_spaces_is_split_on_the_first_space_only() -> None:
    assert answer(b"alias a b@example.org")[0] == netstring(b"NOTFOUND ")  # 'a b' is no userli local part


def test_bare_domain_in_alias_map(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=url("alias", "example.org"), json=[])
    assert answer(b"alias Example.org")[0] == netstring(b"NOTFOUND ")


def test_extension_full_address_found_first(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=url("alias", "user-tag@example.org"), json=["t@example.org"])
    assert answer(b"alias user-tag@example.org", delimiters="-")[0] == netstring(b"OK t@example.org")


def test_extension_falls_back_to_the_stripped_address(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=url("alias", "user-tag@example.org"), json=[])
    httpx_mock.add_response(url=url("alias", "user@example.org"), json=["u@example.org"])
    assert answer(b"alias user-tag@example.org", delimiters="-")[0] == netstring(b"OK u@example.org")
    assert [r.url.path for r in httpx_mock.get_requests()] == [
        "/api/postfix/alias/user-tag@example.org",
        "/api/postfix/alias/user@example.org",
    ]


def test_extension_is_asked_in_full_first_then_stripped(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=url("mailbox", "user+tag@example.org"), json=False)
    httpx_mock.add_response(url=url("mailbox", "user@example.org"), json=True)
    assert answer(b"mailbox user+tag@example.org", delimiters="+")[0] == netstring(b"OK 1")
    assert [r.url.raw_path for r in httpx_mock.get_requests()] == [
        b"/api/postfix/mailbox/user%2Btag@example.org",
        b"/api/postfix/mailbox/user@example.org",
    ]


@pytest.mark.parametrize("delimiters", ["", "+"])
def test_admin_created_address_is_asked_not_refused(httpx_mock: HTTPXMock, delimiters: str) -> None:
    """userli's admin form allows local parts its registration form does not (userli-api.md)."""
    httpx_mock.add_response(url=url("mailbox", "first+last@example.org"), json=True)
    assert answer(b"mailbox First+Last@example.org", delimiters=delimiters)[0] == netstring(b"OK 1")
    assert len(httpx_mock.get_requests()) == 1  # found in full: the stripped form is not asked


def test_no_fallback_after_a_failure(httpx_mock: HTTPXMock) -> None:
    # A failure on the full address must not be hidden by a "no" for the stripped one.
    httpx_mock.add_response(url=url("alias", "user-tag@example.org"), status_code=500, json={"error": "x"})
    assert answer(b"alias user-tag@example.org", delimiters="-")[0] == netstring(b"TEMP userli status 500")
    assert len(httpx_mock.get_requests()) == 1


def test_reply_over_postfix_limit_is_perm(httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture) -> None:
    destinations = [f"destination{i:06d}@example.org" for i in range(4000)]  # ~120 KB joined
    httpx_mock.add_response(json=destinations)
    reply, metrics = answer(b"alias big@example.org")
    assert reply == netstring(b"PERM reply too large")
    assert any(r.levelname == "ERROR" and "too large" in r.getMessage() for r in caplog.records)
    assert b'requests_total{handler="alias",status="error"} 1.0' in metrics.exposition()


def test_reply_just_under_the_limit_is_ok(httpx_mock: HTTPXMock) -> None:
    value = "a" * (100_000 - len("OK ") - len("@x.org")) + "@x.org"
    httpx_mock.add_response(json=[value])
    reply = answer(b"alias big@example.org")[0]
    assert reply.startswith(b"100000:OK aaa")


def test_request_metrics(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=True)
    _, metrics = answer(b"domain example.org")
    assert b'requests_total{handler="domain",status="success"} 1.0' in metrics.exposition()


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        (b"nosuchmap a@example.org", netstring(b"PERM unknown map name")),
        (b"alias", netstring(b"PERM request without a key")),
        (b"alias a/b@example.org", netstring(b"NOTFOUND ")),  # can never exist: no userli call needed
    ],
)
def test_answer_now_for_what_needs_no_userli(payload: bytes, reply: bytes) -> None:
    metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)

    async def run() -> bytes | None:
        client = UserliClient.from_config(config_for(BASE), metrics)
        try:
            return Lookups(client, metrics).answer_now(payload)
        finally:
            await client.aclose()

    assert asyncio.run(run()) == reply


def test_answer_now_defers_what_needs_userli() -> None:
    metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)

    async def run() -> bytes | None:
        client = UserliClient.from_config(config_for(BASE), metrics)
        try:
            return Lookups(client, metrics).answer_now(b"alias a@example.org")
        finally:
            await client.aclose()

    assert asyncio.run(run()) is None
    # Not counted here: the async path answers it and counts it, once.
    labels = {"handler": "alias", "status": "success"}
    assert metrics.registry.get_sample_value("userli_postfix_adapter_requests_total", labels) == 0
