"""Cache, stale-on-error, coalescing and the breaker, over the real userli client answered by
pytest-httpx. A fake clock drives every TTL and cooldown."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from helpers import config_for, netstring
from pytest_httpx import HTTPXMock

from adapter.breaker import BreakerState, CircuitBreaker
from adapter.cache import Freshness
from adapter.lookup_cache import LookupCache
from adapter.lookups import MAP_NAMES, Lookups
from adapter.metrics import Metrics
from adapter.resilience import ResilientUserli
from adapter.userli import ENDPOINTS, NOT_FOUND, Failure, Found, UserliClient

BASE = "http://userli.test"
OK = Found(("user@example.org",))


class FakeUserli:
    """What pytest-httpx answers: ``data[path key]`` while ``mode`` is "up"."""

    def __init__(self, httpx_mock: HTTPXMock) -> None:
        self.data: dict[str, Any] = {"alias/alias@example.org": ["user@example.org"], "mailbox/user@example.org": True}
        self.mode = "up"  # up | down | 500 | 401
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        httpx_mock.add_callback(self._respond, is_reusable=True)

    async def _respond(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/postfix/")
        self.calls[path] += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.mode == "down":
            raise httpx.ConnectError("refused")
        if self.mode in ("500", "401"):
            return httpx.Response(int(self.mode), json={"error": "x"})
        default = [] if path.startswith(("alias", "senders")) else False
        return httpx.Response(200, json=self.data.get(path, default))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, fake: FakeUserli, ttl: float = 300, negative_ttl: float = 0, stale_ttl: float = 86_400,
                 threshold: int = 1000, cooldown: float = 5.0, delimiters: str = "") -> None:  # fmt: skip
        self.fake, self.clock, self.delimiters = fake, Clock(), delimiters
        self.metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)
        self.breaker = CircuitBreaker(threshold, cooldown, self.clock)
        self.policy = Freshness(ttl, negative_ttl, stale_ttl)
        self.client: UserliClient | None = None
        self.resilient: ResilientUserli | None = None

    def run(self, scenario: Callable[[ResilientUserli], Awaitable[None]]) -> None:
        async def main() -> None:
            self.client = UserliClient.from_config(config_for(BASE), self.metrics)
            self.resilient = ResilientUserli(
                self.client,
                self.metrics,
                self.policy,
                LookupCache(1000, self.delimiters),
                self.breaker,
                clock=self.clock,
            )
            try:
                await scenario(self.resilient)
            finally:
                await self.client.aclose()

        asyncio.run(main())

    def counted(self, handler: str, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "userli_postfix_adapter_lookup_cache_total", {"handler": handler, "result": result}
        )
        return value or 0.0


@pytest.fixture
def fake(httpx_mock: HTTPXMock) -> FakeUserli:
    return FakeUserli(httpx_mock)


def test_fresh_answer_is_served_without_asking_userli(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=300)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("alias", "alias@example.org") == OK
        h.clock.now += 299
        assert await r.lookup("alias", "alias@example.org") == OK
        assert fake.calls["alias/alias@example.org"] == 1
        h.clock.now += 2  # past the TTL: ask again
        assert await r.lookup("alias", "alias@example.org") == OK
        assert fake.calls["alias/alias@example.org"] == 2

    h.run(scenario)
    assert (h.counted("alias", "hit"), h.counted("alias", "miss")) == (1, 2)


def test_ttl_zero_disables_caching(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=0, stale_ttl=0)

    async def scenario(r: ResilientUserli) -> None:
        for _ in range(3):
            assert await r.lookup("mailbox", "user@example.org") == Found(("1",))
        assert fake.calls["mailbox/user@example.org"] == 3

    h.run(scenario)


def test_cache_is_per_map(fake: FakeUserli) -> None:
    h = Harness(fake)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("mailbox", "user@example.org") == Found(("1",))
        assert await r.lookup("alias", "user@example.org") == NOT_FOUND
        assert fake.calls == Counter({"mailbox/user@example.org": 1, "alias/user@example.org": 1})

    h.run(scenario)


def test_notfound_is_not_cached_by_default(fake: FakeUserli) -> None:
    h = Harness(fake, negative_ttl=0)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("mailbox", "new@example.org") == NOT_FOUND
        fake.data["mailbox/new@example.org"] = True  # the account is created
        assert await r.lookup("mailbox", "new@example.org") == Found(("1",))  # at once

    h.run(scenario)


def test_notfound_cached_for_the_negative_ttl(fake: FakeUserli) -> None:
    h = Harness(fake, negative_ttl=30)

    async def scenario(r: ResilientUserli) -> None:
        for _ in range(5):
            assert await r.lookup("mailbox", "random@example.org") == NOT_FOUND
        assert fake.calls["mailbox/random@example.org"] == 1
        h.clock.now += 31
        assert await r.lookup("mailbox", "random@example.org") == NOT_FOUND
        assert fake.calls["mailbox/random@example.org"] == 2

    h.run(scenario)


def test_stale_answer_while_userli_is_down(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=60, stale_ttl=3600)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("alias", "alias@example.org") == OK
        h.clock.now += 120  # no longer fresh
        fake.mode = "down"
        assert await r.lookup("alias", "alias@example.org") == OK  # stale stands in
        assert await r.lookup("alias", "unknown@example.org") == Failure("userli unreachable")
        fake.mode = "500"
        assert await r.lookup("alias", "alias@example.org") == OK
        h.clock.now += 3600  # past the stale window
        assert await r.lookup("alias", "alias@example.org") == Failure("userli status 500")

    h.run(scenario)
    assert h.counted("alias", "stale") == 2


def test_no_stale_answer_after_userli_said_notfound(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=60, stale_ttl=3600)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("alias", "alias@example.org") == OK
        assert await r.lookup("mailbox", "user@example.org") == Found(("1",))
        h.clock.now += 120
        del fake.data["alias/alias@example.org"]  # the alias was deleted
        del fake.data["mailbox/user@example.org"]  # and the mailbox
        assert await r.lookup("alias", "alias@example.org") == NOT_FOUND
        assert await r.lookup("mailbox", "user@example.org") == NOT_FOUND
        fake.mode = "down"
        # Never the old OK. An alias "no" may stand in (it never bounces mail on its own) ...
        assert await r.lookup("alias", "alias@example.org") == NOT_FOUND
        # ... a mailbox "no" may not: it would bounce mail, so the outage answers TEMP.
        assert await r.lookup("mailbox", "user@example.org") == Failure("userli unreachable")

    h.run(scenario)


def test_notfound_that_rejects_mail_is_never_served_stale(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=60, stale_ttl=3600)

    async def scenario(r: ResilientUserli) -> None:
        for map_name in ("mailbox", "domain", "senders", "alias"):
            assert await r.lookup(map_name, "ghost@example.org") == NOT_FOUND
        h.clock.now += 1
        fake.mode = "down"
        for map_name in ("mailbox", "domain", "senders"):
            assert await r.lookup(map_name, "ghost@example.org") == Failure("userli unreachable"), map_name
        assert await r.lookup("alias", "ghost@example.org") == NOT_FOUND

    h.run(scenario)


def test_no_stale_answer_for_configuration_errors(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=60, stale_ttl=3600)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("alias", "alias@example.org") == OK
        h.clock.now += 120
        fake.mode = "401"  # the token was revoked: surface it, do not hide it behind the cache
        outcome = await r.lookup("alias", "alias@example.org")
        assert outcome.reason == "userli rejected the API token" and not outcome.transient  # type: ignore[union-attr]

    h.run(scenario)


def test_stale_ttl_zero_disables_stale_answers(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=60, stale_ttl=0)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("alias", "alias@example.org") == OK
        h.clock.now += 61
        fake.mode = "down"
        assert await r.lookup("alias", "alias@example.org") == Failure("userli unreachable")

    h.run(scenario)


def test_concurrent_lookups_of_a_cold_key_share_one_call(fake: FakeUserli) -> None:
    h = Harness(fake)

    async def scenario(r: ResilientUserli) -> None:
        fake.gate = asyncio.Event()
        waiters = [asyncio.create_task(r.lookup("alias", "alias@example.org")) for _ in range(100)]
        await asyncio.sleep(0.05)
        fake.gate.set()
        assert await asyncio.gather(*waiters) == [OK] * 100
        assert fake.calls["alias/alias@example.org"] == 1

    h.run(scenario)
    sample = h.metrics.registry.get_sample_value("userli_postfix_adapter_lookup_coalesced_total", {"handler": "alias"})
    assert sample == 99


def test_a_waiter_going_away_does_not_cancel_the_shared_call(fake: FakeUserli) -> None:
    h = Harness(fake)

    async def scenario(r: ResilientUserli) -> None:
        fake.gate = asyncio.Event()
        first = asyncio.create_task(r.lookup("alias", "alias@example.org"))
        second = asyncio.create_task(r.lookup("alias", "alias@example.org"))
        await asyncio.sleep(0.05)
        first.cancel()  # its client disconnected
        fake.gate.set()
        assert await second == OK
        assert fake.calls["alias/alias@example.org"] == 1

    h.run(scenario)


def test_breaker_answers_at_once_while_open_then_probes(fake: FakeUserli) -> None:
    h = Harness(fake, ttl=60, stale_ttl=3600, threshold=3, cooldown=5)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("alias", "alias@example.org") == OK
        h.clock.now += 61
        fake.mode = "down"
        for i in range(3):
            await r.lookup("mailbox", f"cold{i}@example.org")
        assert h.breaker.state is BreakerState.OPEN
        calls = sum(fake.calls.values())
        assert await r.lookup("mailbox", "other@example.org") == Failure("userli unavailable")
        assert await r.lookup("alias", "alias@example.org") == OK  # stale, still served
        assert sum(fake.calls.values()) == calls  # userli was not asked
        fake.mode = "up"
        h.clock.now += 5  # cooldown over: one probe goes through and closes the breaker
        assert await r.lookup("mailbox", "user@example.org") == Found(("1",))
        assert h.breaker.state is BreakerState.CLOSED

    h.run(scenario)


def test_outage_is_logged_when_it_starts_and_ends(fake: FakeUserli, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(fake, ttl=60, stale_ttl=3600)

    async def scenario(r: ResilientUserli) -> None:
        assert await r.lookup("alias", "alias@example.org") == OK
        h.clock.now += 61
        fake.mode = "down"
        for i in range(10):
            await r.lookup("alias", "alias@example.org")
            await r.lookup("mailbox", f"cold{i}@example.org")
        fake.mode = "up"
        await r.lookup("mailbox", "user@example.org")

    with caplog.at_level(logging.INFO, logger="adapter"):
        h.run(scenario)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("adapter.")]
    assert messages.count("userli is failing") == 1
    assert messages.count("answering from stale cache while userli fails") == 1
    assert messages.count("userli recovered") == 1
    assert all("@" not in m for m in messages)


def test_a_cached_reply_never_outlives_its_answer(fake: FakeUserli) -> None:
    """The hot path's reply is the cache entry's own: it changes, expires and goes with it."""
    h = Harness(fake, ttl=60, negative_ttl=30, stale_ttl=3600)
    request, path = b"mailbox user@example.org", "mailbox/user@example.org"

    async def scenario(r: ResilientUserli) -> None:
        lookups = Lookups(r, h.metrics)
        steps: list[tuple[str, Any, bytes]] = [
            ("up", True, netstring(b"OK 1")),
            ("up", False, netstring(b"NOTFOUND ")),  # the mailbox was deleted: never the old OK
            ("up", True, netstring(b"OK 1")),
            ("500", True, netstring(b"OK 1")),  # userli fails: the last OK stands in, stale
        ]
        for mode, data, reply in steps:
            fake.mode, fake.data[path] = mode, data
            h.clock.now += 61  # whatever was cached is no longer fresh
            assert lookups.answer_now(request) is None
            assert await lookups.answer(request) == reply
            if mode == "up":
                assert lookups.answer_now(request) == reply  # now a hit, the same reply
        fake.mode, fake.data[path] = "up", False
        h.clock.now += 61
        assert await lookups.answer(request) == netstring(b"NOTFOUND ")
        fake.mode = "500"
        h.clock.now += 31  # the NOTFOUND is no longer fresh, and a mailbox "no" never stands in
        assert lookups.answer_now(request) is None
        assert await lookups.answer(request) == netstring(b"TEMP userli status 500")

    h.run(scenario)


@pytest.mark.parametrize(
    ("request_", "answers", "reply"),
    [
        # not in canonical form: worked out again, the same answer as the canonical request
        (b"alias Alias@Example.ORG", {"alias/alias@example.org": ["user@example.org"]}, b"OK user@example.org"),
        # the full address is not found: the answer is the stripped address's, never NOTFOUND
        (b"alias alias+tag@example.org", {"alias/alias@example.org": ["user@example.org"]}, b"OK user@example.org"),
        # the full address is found: that is the answer
        (b"alias alias+tag@example.org", {"alias/alias+tag@example.org": ["t@example.org"]}, b"OK t@example.org"),
        (b"domain Example.ORG", {"domain/example.org": True}, b"OK 1"),
        (b"mailbox Nobody+Tag@example.org", {}, b"NOTFOUND "),  # neither key: NOTFOUND, from the cache too
    ],
)
def test_cached_answers_for_requests_of_other_keys(
    fake: FakeUserli, request_: bytes, answers: dict[str, Any], reply: bytes
) -> None:
    h = Harness(fake, ttl=60, negative_ttl=60, delimiters="+")

    async def scenario(r: ResilientUserli) -> None:
        fake.data.update(answers)
        lookups = Lookups(r, h.metrics)
        assert await lookups.answer(request_) == netstring(reply)
        calls = sum(fake.calls.values())
        for _ in range(3):  # from the cache: the same reply, no userli call
            assert lookups.answer_now(request_) == netstring(reply)
        assert sum(fake.calls.values()) == calls

    h.run(scenario)
