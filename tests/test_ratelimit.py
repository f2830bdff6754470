"""Sliding windows with an injectable clock, the same tests against both stores: in-process,
and Redis (a real redis-server, the Lua script)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from adapter.ratelimit import DAY, HOUR, MemoryRateLimiter, RateLimiter, RateLimitError, RedisRateLimiter
from adapter.redis_client import connect
from adapter.userli import Quota


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


Scenario = Callable[[RateLimiter, Clock], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    def runner(scenario: Scenario) -> None:
        clock = Clock()

        async def main() -> None:
            if request.param == "memory":
                await scenario(MemoryRateLimiter(clock), clock)
                return
            client = connect(request.getfixturevalue("redis_server").url)
            try:
                await scenario(RedisRateLimiter(client, clock), clock)
            finally:
                await client.aclose()

        asyncio.run(main())

    return runner


async def allowed(
    limiter: RateLimiter, quota: Quota, n: int, identity: str = "u@example.org", weight: int = 1
) -> list[bool]:
    return [(await limiter.check(identity, quota, weight)).allowed for _ in range(n)]


def test_exactly_n_per_hour_then_refused(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        assert await allowed(limiter, Quota(per_hour=5, per_day=0), 7) == [True] * 5 + [False] * 2

    run(scenario)


def test_hour_window_slides(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        quota = Quota(per_hour=3, per_day=0)
        for _ in range(3):
            assert (await limiter.check("u@example.org", quota, 1)).allowed
            clock.now += 600  # one every ten minutes
        assert not (await limiter.check("u@example.org", quota, 1)).allowed  # at t=30 min: 3 in the last hour
        clock.now += 2400 + 1  # now t=70 min: those sent at 0 and 10 min have left the window
        decision = await limiter.check("u@example.org", quota, 1)
        assert decision.last_hour == 2 and decision.allowed  # the one sent at 20 min, the refused at 30 min
        assert not (await limiter.check("u@example.org", quota, 1)).allowed

    run(scenario)


def test_day_window(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        quota = Quota(per_hour=0, per_day=4)
        for _ in range(4):
            assert (await limiter.check("u@example.org", quota, 1)).allowed
            clock.now += HOUR  # spread out: the hour limit alone would never bite
        start = clock.now - 4 * HOUR
        assert not (await limiter.check("u@example.org", quota, 1)).allowed  # at 4 h, and recorded
        clock.now = start + DAY + 2 * HOUR + 1  # those sent at 0 h, 1 h and 2 h are over a day old
        decision = await limiter.check("u@example.org", quota, 1)
        assert decision.last_day == 2 and decision.allowed  # 3 h and the refused one at 4 h remain

    run(scenario)


def test_both_limits_apply(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        quota = Quota(per_hour=2, per_day=3)
        assert await allowed(limiter, quota, 3) == [True, True, False]
        clock.now += HOUR + 1
        # hour window empty, but the day already holds 3 (the refused one counts too)
        assert await allowed(limiter, quota, 1) == [False]

    run(scenario)


def test_refused_attempts_keep_a_sender_blocked(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        quota = Quota(per_hour=2, per_day=0)
        assert await allowed(limiter, quota, 2) == [True, True]
        for _ in range(6):  # keeps trying every 15 minutes
            clock.now += 900
            assert not (await limiter.check("u@example.org", quota, 1)).allowed

    run(scenario)


def test_zero_means_unlimited(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        assert all(await allowed(limiter, Quota(per_hour=0, per_day=0), 50))
        assert all(await allowed(limiter, Quota(per_hour=0, per_day=100), 50, identity="v@example.org"))

    run(scenario)


def test_recipient_weights(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        quota = Quota(per_hour=10, per_day=0)
        assert (await limiter.check("u@example.org", quota, 4)).allowed
        assert (await limiter.check("u@example.org", quota, 6)).allowed
        assert not (await limiter.check("u@example.org", quota, 1)).allowed
        assert not (await limiter.check("w@example.org", quota, 500)).allowed  # one message, 500 recipients

    run(scenario)


def test_identities_are_counted_apart(run: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        quota = Quota(per_hour=1, per_day=0)
        assert await allowed(limiter, quota, 2, identity="a@example.org") == [True, False]
        assert await allowed(limiter, quota, 1, identity="b@example.org") == [True]

    run(scenario)


def test_a_hammering_sender_stays_blocked_with_bounded_state(
    run: Callable[[Scenario], None], request: pytest.FixtureRequest
) -> None:
    stored: list[int] = []

    async def scenario(limiter: RateLimiter, clock: Clock) -> None:
        quota = Quota(per_hour=5, per_day=20)
        assert await allowed(limiter, quota, 5) == [True] * 5
        for _ in range(5000):  # keeps trying, a second apart
            clock.now += 1
            assert not (await limiter.check("u@example.org", quota, 1)).allowed
        stored.append(await _stored_events(limiter))
        clock.now += HOUR + 1  # stops for an hour: the day still holds 20+, so still refused
        assert not (await limiter.check("u@example.org", quota, 1)).allowed
        clock.now += DAY
        assert (await limiter.check("u@example.org", quota, 1)).allowed

    run(scenario)
    assert stored == [21]  # max(per_hour, per_day) + 1, however long the hammering went on


async def _stored_events(limiter: RateLimiter) -> int:
    if isinstance(limiter, MemoryRateLimiter):
        return len(limiter._events["u@example.org"])
    assert isinstance(limiter, RedisRateLimiter)
    return int(await limiter._client.zcard(RedisRateLimiter.key("u@example.org")))


def test_memory_store_forgets_idle_senders() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)

    async def scenario() -> None:
        quota = Quota(per_hour=0, per_day=50)
        for i in range(5000):
            await limiter.check(f"s{i}@example.org", quota, 1)
        clock.now += DAY + 1
        for _ in range(10_000):
            await limiter.check("active@example.org", quota, 1)

    asyncio.run(scenario())
    assert limiter.tracked == 1


def test_redis_down_raises_for_fail_open(redis_server: object) -> None:
    async def scenario() -> None:
        client = connect("redis://127.0.0.1:1/0")  # nothing listens there
        try:
            with pytest.raises(RateLimitError):
                await RedisRateLimiter(client).check("u@example.org", Quota(1, 1), 1)
        finally:
            await client.aclose()

    asyncio.run(scenario())
