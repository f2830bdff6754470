"""The whole service on loopback: real socketmap clients over TCP and UNIX sockets, a real HTTP
stand-in for userli, and /metrics, /health, /ready over real HTTP."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import RunningService, SocketmapClient, StartAdapter, UserliStub, netstring, wait_until

from adapter import http as http_module
from adapter.config import parse_listen_address


def http_get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


EXPECTED = [
    ("alias", "alias@example.org", "OK user@example.org"),
    ("alias", "Team@EXAMPLE.org", "OK user@example.org,other@example.org"),
    ("alias", "user@example.org", "NOTFOUND "),
    ("alias", "nobody@example.org", "NOTFOUND "),
    ("alias", "example.org", "NOTFOUND "),  # bare domain, as Postfix asks it
    ("domain", "example.org", "OK 1"),
    ("domain", "Example.ORG", "OK 1"),
    ("domain", "example.com", "NOTFOUND "),
    ("mailbox", "user@example.org", "OK 1"),
    ("mailbox", "USER@example.org", "OK 1"),
    ("mailbox", "ghost@example.org", "NOTFOUND "),
    ("senders", "user@example.org", "OK user@example.org"),
    ("senders", "alias@example.org", "OK user@example.org"),
    ("senders", "ghost@example.org", "NOTFOUND "),
    ("relay", "user@example.org", "PERM unknown map name"),
]


def test_lookups_over_tcp(adapter: RunningService) -> None:
    with SocketmapClient(adapter.socketmap_port) as client:
        for map_name, key, reply in EXPECTED:
            assert client.query(map_name, key) == reply, (map_name, key)


def test_many_lookups_on_one_connection(start_adapter: StartAdapter, userli: UserliStub) -> None:
    adapter = start_adapter(cache_ttl=0, stale_ttl=0)  # uncached: every lookup reaches userli
    with SocketmapClient(adapter.socketmap_port) as client:
        for _ in range(20):
            for map_name, key, reply in EXPECTED:
                assert client.query(map_name, key) == reply
    assert len(userli.requests) == 20 * (len(EXPECTED) - 1)  # PERM asks nobody


def test_lookups_over_a_unix_socket(start_adapter: StartAdapter, tmp_path: Path) -> None:
    path = tmp_path / "socketmap.sock"
    running = start_adapter(socketmap_address=parse_listen_address(str(path)), socketmap_socket_mode=0o660)
    assert oct(path.stat().st_mode & 0o777) == oct(0o660)
    with SocketmapClient(str(path)) as client:
        for map_name, key, reply in EXPECTED:
            assert client.query(map_name, key) == reply
    running.stop()
    assert not path.exists()  # removed on exit


def test_pipelined_requests_answered_in_order(adapter: RunningService) -> None:
    with SocketmapClient(adapter.socketmap_port) as client:
        client.send(b"".join(netstring(f"{m} {k}".encode()) for m, k, _ in EXPECTED * 3))
        assert [client.read_reply() for _ in range(len(EXPECTED) * 3)] == [r for _, _, r in EXPECTED * 3]


def test_request_split_across_writes(adapter: RunningService) -> None:
    with SocketmapClient(adapter.socketmap_port) as client:
        wire = netstring(b"mailbox user@example.org")
        for i in range(len(wire)):
            client.send(wire[i : i + 1])
        assert client.read_reply() == "OK 1"


def test_concurrent_connections(adapter: RunningService) -> None:
    def one_client(_: int) -> bool:
        with SocketmapClient(adapter.socketmap_port) as client:
            return all(client.query(m, k) == r for _ in range(2) for m, k, r in EXPECTED)

    with ThreadPoolExecutor(max_workers=40) as pool:
        assert all(pool.map(one_client, range(40)))


def test_slow_userli_call_does_not_block_other_connections(adapter: RunningService, userli: UserliStub) -> None:
    release = threading.Event()

    def hold_slow(map_name: str, key: str) -> tuple[int, bytes] | None:
        if key == "slow@example.org":
            release.wait(10)
        return None

    userli.behaviour = hold_slow
    slow = SocketmapClient(adapter.socketmap_port)
    slow.send(netstring(b"mailbox slow@example.org"))
    wait_until(lambda: "/api/postfix/mailbox/slow@example.org" in userli.paths())
    with SocketmapClient(adapter.socketmap_port) as fast:
        assert fast.query("domain", "example.org") == "OK 1"  # answered while the slow one hangs
    release.set()
    assert slow.read_reply() == "NOTFOUND "
    slow.close()


def test_broken_framing_closes_only_that_connection(adapter: RunningService) -> None:
    with SocketmapClient(adapter.socketmap_port) as good, SocketmapClient(adapter.socketmap_port) as bad:
        assert good.query("domain", "example.org") == "OK 1"
        bad.send(b"99999999:")  # over the length cap
        assert bad.closed_by_server()
        assert good.query("domain", "example.org") == "OK 1"


def test_userli_down_is_temp_never_notfound(userli: UserliStub, start_adapter: StartAdapter) -> None:
    running = start_adapter(userli_timeout=1.0)
    with SocketmapClient(running.socketmap_port) as client:
        assert client.query("domain", "warm-up.example") == "NOTFOUND "  # keep-alive connection is warm
        userli.stop()
        for map_name, key, _ in EXPECTED[:-1]:
            if key == "example.org" and map_name == "alias":
                continue
            assert client.query(map_name, key) == "TEMP userli unreachable", (map_name, key)
        # keys that can never exist are still answered, without userli
        assert client.query("mailbox", "a/b@example.org") == "NOTFOUND "


def test_userli_errors_are_temp(adapter: RunningService, userli: UserliStub) -> None:
    answers = {
        "s500@example.org": (500, b'{"error":"boom"}'),
        "s401@example.org": (401, b'{"error":"Invalid API token"}'),
        "html@example.org": (200, b"<html>maintenance</html>"),
        "wrong@example.org": (200, b'{"error":"x"}'),
    }
    userli.behaviour = lambda map_name, key: answers.get(key)
    with SocketmapClient(adapter.socketmap_port) as client:
        assert client.query("mailbox", "s500@example.org") == "TEMP userli status 500"
        assert client.query("mailbox", "s401@example.org") == "TEMP userli rejected the API token"
        assert client.query("mailbox", "html@example.org") == "TEMP userli sent invalid JSON"
        assert client.query("alias", "wrong@example.org") == "TEMP userli sent unexpected data"


def test_wrong_token_is_temp_and_logged_as_a_token_error(
    start_adapter: StartAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_adapter(userli_token="wrong-token")
    with caplog.at_level(logging.INFO, logger="adapter"), SocketmapClient(running.socketmap_port) as client:
        for _ in range(5):
            assert client.query("mailbox", "user@example.org") == "TEMP userli rejected the API token"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].reason == "userli rejected the API token" and "USERLI_TOKEN" in errors[0].hint
    assert "wrong-token" not in caplog.text


def test_token_without_the_postfix_scope_is_temp(userli: UserliStub, adapter: RunningService) -> None:
    userli.scopes = {"dovecot"}
    with SocketmapClient(adapter.socketmap_port) as client:
        for map_name in ("alias", "domain", "mailbox", "senders"):
            key = "example.org" if map_name == "domain" else "user@example.org"
            assert client.query(map_name, key) == "TEMP userli API token lacks the postfix scope"
    status, body, _ = http_get(adapter.http_url + "/ready")
    assert (status, json.loads(body)["error"]) == (503, "userli API token lacks the postfix scope")


def test_admin_created_addresses_are_asked_about(userli: UserliStub, adapter: RunningService) -> None:
    """userli's admin form allows local parts like first+last@ (userli-api.md): never a local NOTFOUND."""
    userli.data["alias"]["o'brien@example.org"] = ["first+last@example.org"]
    with SocketmapClient(adapter.socketmap_port) as client:
        assert client.query("mailbox", "First+Last@example.org") == "OK 1"
        assert client.query("alias", "O'Brien@example.org") == "OK first+last@example.org"
        assert client.query("mailbox", "first+other@example.org") == "NOTFOUND "  # userli said no
    assert "/api/postfix/mailbox/first%2Bother@example.org" in userli.paths()


def test_timeout_is_temp(userli: UserliStub, start_adapter: StartAdapter) -> None:
    userli.delay = 1.0
    running = start_adapter(userli_timeout=0.2)
    with SocketmapClient(running.socketmap_port) as client:
        assert client.query("mailbox", "user@example.org") == "TEMP userli timeout"


def test_pool_limit_answers_temp_server_busy(start_adapter: StartAdapter) -> None:
    running = start_adapter(max_connections=2)
    first, second = SocketmapClient(running.socketmap_port), SocketmapClient(running.socketmap_port)
    assert first.query("domain", "example.org") == "OK 1"
    assert second.query("domain", "example.org") == "OK 1"
    with SocketmapClient(running.socketmap_port) as third:
        assert third.query("domain", "example.org") == "TEMP server busy"
        assert third.closed_by_server()
    body = http_get(running.http_url + "/metrics")[1]
    assert b"userli_postfix_adapter_connection_pool_full_total 1.0" in body
    assert b"userli_postfix_adapter_active_connections 2.0" in body
    first.close()
    second.close()


def test_idle_connection_closed(start_adapter: StartAdapter) -> None:
    running = start_adapter(idle_timeout=0.3)
    with SocketmapClient(running.socketmap_port) as client:
        assert client.query("domain", "example.org") == "OK 1"
        assert client.closed_by_server()


def test_graceful_shutdown_finishes_the_lookup_in_flight(adapter: RunningService, userli: UserliStub) -> None:
    release = threading.Event()
    userli.behaviour = lambda m, k: (release.wait(10), None)[1] if k == "inflight@example.org" else None
    client = SocketmapClient(adapter.socketmap_port)
    client.send(netstring(b"mailbox inflight@example.org"))
    wait_until(lambda: "/api/postfix/mailbox/inflight@example.org" in userli.paths())
    stopping = adapter.submit(adapter.service.stop())
    wait_until(lambda: adapter.service.stopping)
    assert http_get(adapter.http_url + "/ready")[0] == 503
    release.set()
    assert client.read_reply() == "NOTFOUND "
    assert client.closed_by_server()
    stopping.result(10)
    client.close()


def test_health(adapter: RunningService) -> None:
    status, body, content_type = http_get(adapter.http_url + "/health")
    assert (status, json.loads(body), content_type) == (200, {"status": "ok"}, "application/json")


def test_ready_when_userli_answers(adapter: RunningService, userli: UserliStub) -> None:
    status, body, _ = http_get(adapter.http_url + "/ready")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    assert "/api/postfix/domain/health-check.invalid" in userli.paths()
    assert b"userli_postfix_adapter_health_check_status 1.0" in http_get(adapter.http_url + "/metrics")[1]


def test_not_ready_when_userli_is_down(adapter: RunningService, userli: UserliStub) -> None:
    userli.stop()
    status, body, _ = http_get(adapter.http_url + "/ready")
    assert status == 503
    assert json.loads(body) == {"status": "unavailable", "error": "userli unreachable"}
    assert b"userli_postfix_adapter_health_check_status 0.0" in http_get(adapter.http_url + "/metrics")[1]
    assert http_get(adapter.http_url + "/health")[0] == 200  # liveness does not depend on userli


def test_not_ready_when_the_token_is_rejected(start_adapter: StartAdapter) -> None:
    running = start_adapter(userli_token="revoked")
    status, body, _ = http_get(running.http_url + "/ready")
    assert (status, json.loads(body)["error"]) == (503, "userli rejected the API token")
    assert "USERLI_TOKEN" in json.loads(body)["hint"]


def test_unknown_path_is_404(adapter: RunningService) -> None:
    assert http_get(adapter.http_url + "/nope")[0] == 404


def test_metrics(adapter: RunningService) -> None:
    with SocketmapClient(adapter.socketmap_port) as client:
        for map_name, key, _ in EXPECTED:
            client.query(map_name, key)
        client.query("an-unknown-map", "secret-user@example.org")
    status, body, content_type = http_get(adapter.http_url + "/metrics")
    text = body.decode()
    assert status == 200
    assert content_type.startswith("text/plain")
    for line in (
        'userli_postfix_adapter_requests_total{handler="alias",status="success"} 2.0',
        'userli_postfix_adapter_requests_total{handler="alias",status="notfound"} 3.0',
        'userli_postfix_adapter_requests_total{handler="domain",status="success"} 2.0',
        'userli_postfix_adapter_requests_total{handler="unknown",status="error"} 2.0',
        # user@ and USER@ are one canonical key: the second is a cache hit
        'userli_postfix_adapter_http_client_requests_total{endpoint="mailbox",status_code="200"} 2.0',
        'userli_postfix_adapter_lookup_cache_total{handler="mailbox",result="hit"} 1.0',
        'userli_postfix_adapter_lookup_cache_total{handler="mailbox",result="miss"} 2.0',
        # 6 positive answers, and 3 alias NOTFOUNDs kept as outage fallbacks (other NOTFOUNDs are not)
        "userli_postfix_adapter_lookup_cache_entries 9.0",
        "userli_postfix_adapter_userli_breaker_state 0.0",
        "userli_postfix_adapter_active_connections 0.0",
        'userli_postfix_adapter_build_info{version="',
        "userli_postfix_adapter_request_duration_seconds_bucket",
        "userli_postfix_adapter_http_client_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert line in text, line
    assert "@" not in text  # no address ever becomes a label
    assert "an-unknown-map" not in text


@pytest.mark.parametrize("path", ["/metrics", "/health"])
def test_http_keep_alive(adapter: RunningService, path: str) -> None:
    import http.client

    port = adapter.service.http.bound.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(3):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        response.read()
    conn.close()


def test_second_instance_on_the_same_unix_socket_fails_and_leaves_the_first_alone(
    start_adapter: StartAdapter, tmp_path: Path
) -> None:
    path = tmp_path / "socketmap.sock"
    address = parse_listen_address(str(path))
    start_adapter(socketmap_address=address)
    with pytest.raises(OSError, match="in use"):
        start_adapter(socketmap_address=address)
    assert path.exists()
    with SocketmapClient(str(path)) as client:
        assert client.query("domain", "example.org") == "OK 1"


def test_an_unexpected_error_is_temp_and_the_connection_stays(adapter: RunningService) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    userli_client = adapter.service.userli
    original = userli_client.lookup
    userli_client.lookup = broken  # type: ignore[method-assign]
    try:
        with SocketmapClient(adapter.socketmap_port) as client:
            assert client.query("mailbox", "user@example.org") == "TEMP internal error"
            userli_client.lookup = original  # type: ignore[method-assign]
            assert client.query("mailbox", "user@example.org") == "OK 1"
    finally:
        userli_client.lookup = original  # type: ignore[method-assign]


def test_a_flood_of_ready_requests_is_one_userli_call_a_second(userli: UserliStub, adapter: RunningService) -> None:
    """Probes must not compete with mail for userli's call slots, however many there are."""
    userli.delay = 0.3
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: http_get(adapter.http_url + "/ready")[0], range(200)))
    assert answers == [200] * 200
    probes = [p for p in userli.paths() if p.endswith("/health-check.invalid")]
    assert 1 <= len(probes) <= 3, len(probes)


def test_slow_clients_cannot_starve_the_liveness_probe(adapter: RunningService) -> None:
    """Every slot held by a client that sends a byte now and then: /health still answers at once."""
    port = adapter.service.http.bound.port
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(http_module.MAX_CONNECTIONS + 20)]
    for sock in slow:
        sock.sendall(b"G")
    started = time.monotonic()
    status, body, _ = http_get(adapter.http_url + "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert time.monotonic() - started < 1.0
    for sock in slow:
        sock.close()


def test_a_request_must_arrive_whole_in_time(adapter: RunningService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_module, "REQUEST_TIMEOUT", 0.5)
    sock = socket.create_connection(("127.0.0.1", adapter.service.http.bound.port), timeout=5)
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.1 s never completes
            sock.sendall(bytes([byte]))
            time.sleep(0.1)
    assert sock.recv(100) == b""  # closed at the deadline, not kept alive by the trickle
    assert time.monotonic() - started < 2.0
    sock.close()
