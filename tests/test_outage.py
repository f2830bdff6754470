"""Mail keeps flowing when userli or Redis fail: the whole service on loopback with a real
redis-server and the HTTP stand-in for userli, stopped and started under it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import redis
from helpers import RedisServer, SocketmapClient, StartAdapter, UserliStub, metric, netstring, wait_until


def http_get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_two_adapters_share_one_redis(
    start_adapter: StartAdapter, userli: UserliStub, redis_server: RedisServer
) -> None:
    first = start_adapter(redis_url=redis_server.url)
    second = start_adapter(redis_url=redis_server.url)
    with SocketmapClient(first.socketmap_port) as client:
        assert client.query("alias", "Team@Example.org") == "OK user@example.org,other@example.org"
    with SocketmapClient(second.socketmap_port) as client:
        assert client.query("alias", "team@example.org") == "OK user@example.org,other@example.org"
    assert userli.paths().count("/api/postfix/alias/team@example.org") == 1  # the second came from Redis
    shared = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert shared.get("userli:pyadapter:lookup:alias:team@example.org") == "OK user@example.org,other@example.org"
    assert 86_000 < shared.ttl("userli:pyadapter:lookup:alias:team@example.org") <= 86_400  # kept for the stale window


def test_go_adapter_entries_in_redis_are_neither_read_nor_written(
    start_adapter: StartAdapter, userli: UserliStub, redis_server: RedisServer
) -> None:
    """A Go adapter sharing the Redis (a mixed fleet, a rollback) keeps its own keys and meaning."""
    shared = redis.Redis.from_url(redis_server.url, decode_responses=True)
    shared.set("userli:lookup:alias:alias@example.org", "OK stale-go-answer@example.org", ex=3600)
    adapter = start_adapter(redis_url=redis_server.url)
    with SocketmapClient(adapter.socketmap_port) as client:
        assert client.query("alias", "alias@example.org") == "OK user@example.org"
        assert client.query("mailbox", "nobody@example.org") == "NOTFOUND "
    assert shared.get("userli:lookup:alias:alias@example.org") == "OK stale-go-answer@example.org"
    assert shared.keys("userli:lookup:*") == ["userli:lookup:alias:alias@example.org"]


def test_redis_killed_mid_test_lookups_still_answer(
    start_adapter: StartAdapter, userli: UserliStub, redis_server: RedisServer
) -> None:
    adapter = start_adapter(redis_url=redis_server.url)
    with SocketmapClient(adapter.socketmap_port) as client:
        assert client.query("mailbox", "user@example.org") == "OK 1"
        redis_server.kill()
        assert client.query("mailbox", "other@example.org") == "OK 1"  # from userli
        assert client.query("alias", "alias@example.org") == "OK user@example.org"
        assert client.query("mailbox", "user@example.org") == "OK 1"  # from the in-process tier
        assert client.query("mailbox", "ghost@example.org") == "NOTFOUND "
    errors = metric(adapter.http_url, 'userli_postfix_adapter_lookup_cache_total{handler="mailbox",result="error"}')
    assert errors >= 1


def test_outage_drill(start_adapter: StartAdapter, userli: UserliStub) -> None:
    adapter = start_adapter(cache_ttl=0.2, userli_timeout=1.0, breaker_threshold=3, breaker_cooldown=0.5)
    known = {
        ("alias", "alias@example.org"): "OK user@example.org",
        ("domain", "example.org"): "OK 1",
        ("mailbox", "user@example.org"): "OK 1",
        ("senders", "team@example.org"): "OK user@example.org,other@example.org",
    }
    with SocketmapClient(adapter.socketmap_port) as client:
        for (map_name, key), reply in known.items():
            assert client.query(map_name, key) == reply
        assert client.query("mailbox", "ghost@example.org") == "NOTFOUND "
        time.sleep(0.3)  # every cached answer is now past its TTL: only stale copies remain
        userli.stop()
        for _ in range(3):
            for (map_name, key), reply in known.items():
                assert client.query(map_name, key) == reply  # stale answers keep mail flowing
            for map_name, key in [("mailbox", "ghost@example.org"), ("mailbox", "new@example.org")]:
                assert client.query(map_name, key).startswith("TEMP "), key  # never NOTFOUND
        assert metric(adapter.http_url, "userli_postfix_adapter_userli_breaker_state") == 2  # open
        stale = metric(adapter.http_url, 'userli_postfix_adapter_lookup_cache_total{handler="alias",result="stale"}')
        assert stale == 3
        status, body = http_get(adapter.http_url + "/ready")
        assert (status, body["status"]) == (200, "degraded")

        userli.data["mailbox"]["new@example.org"] = True
        userli.restart()
        time.sleep(0.6)  # past the breaker cooldown: the next lookup is the probe
        assert client.query("mailbox", "new@example.org") == "OK 1"  # fresh from userli again
        assert metric(adapter.http_url, "userli_postfix_adapter_userli_breaker_state") == 0
        # /ready answers from a probe at most a second old
        wait_until(lambda: http_get(adapter.http_url + "/ready") == (200, {"status": "ready"}), timeout=3)


def test_not_ready_when_userli_is_down_and_nothing_is_cached(start_adapter: StartAdapter, userli: UserliStub) -> None:
    adapter = start_adapter()
    userli.stop()
    assert http_get(adapter.http_url + "/ready") == (503, {"status": "unavailable", "error": "userli unreachable"})


def test_concurrent_lookups_of_one_cold_key_make_one_userli_request(
    start_adapter: StartAdapter, userli: UserliStub
) -> None:
    adapter = start_adapter()
    release = threading.Event()
    userli.behaviour = lambda m, k: (release.wait(10), None)[1]
    clients = [SocketmapClient(adapter.socketmap_port) for _ in range(100)]
    for client in clients:
        client.send(netstring(b"alias alias@example.org"))
    wait_until(lambda: len(userli.requests) == 1)

    def coalesced() -> float:
        return metric(adapter.http_url, 'userli_postfix_adapter_lookup_coalesced_total{handler="alias"}')

    wait_until(lambda: coalesced() == 99)  # all 100 are waiting on the one call
    release.set()
    assert [client.read_reply() for client in clients] == ["OK user@example.org"] * 100
    assert userli.paths() == ["/api/postfix/alias/alias@example.org"]
    for client in clients:
        client.close()
