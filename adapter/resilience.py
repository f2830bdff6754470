"""Lookups that keep mail flowing when userli is slow or down.

``ResilientUserli.lookup`` answers like ``UserliClient.lookup`` (Found / NotFound / Failure), but:

1. a fresh cached answer is served without asking userli (in-process tier, then Redis);
2. concurrent lookups of the same key share one userli call (single flight);
3. the circuit breaker answers at once while userli is known to be down;
4. when userli fails in an outage-like way, the last answer younger than LOOKUP_STALE_TTL stands
   in for it: a positive one, or an alias map's NOTFOUND (see cache.py for why only that one).

The userli client logs outages (once, new reasons, recovery); this layer only says, at most once
a minute, that it is answering from the stale cache, with how many answers it served so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from adapter.breaker import BreakerState, CircuitBreaker
from adapter.cache import Answer, Entry, Freshness, RedisCache
from adapter.config import Config
from adapter.lookup_cache import LookupCache, request_key
from adapter.metrics import Metrics
from adapter.userli import Failure, Outcome, UserliClient

if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["FIRST_TIER_TTL", "ResilientUserli"]

log = logging.getLogger("adapter.resilience")

# With Redis, the in-process tier only spares the Redis round trip: it holds an answer this long.
FIRST_TIER_TTL = 10.0
BREAKER_OPEN = Failure("userli unavailable")
STALE_REPORT_INTERVAL = 60.0  # "answering from stale cache" at most this often


class ResilientUserli:
    def __init__(
        self,
        userli: UserliClient,
        metrics: Metrics,
        policy: Freshness,
        memory: LookupCache,
        breaker: CircuitBreaker,
        shared_cache: RedisCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._userli = userli
        self._metrics = metrics
        self._policy = policy
        self._memory = memory
        self._breaker = breaker
        self._redis = shared_cache
        self._clock = clock
        self._first_tier_cap = FIRST_TIER_TTL if shared_cache is not None else float("inf")
        self._in_flight: dict[bytes, asyncio.Task[Outcome]] = {}
        self._stale_served = 0  # since the last "answering from stale cache" line
        self._stale_reported_at = -STALE_REPORT_INTERVAL

    @classmethod
    def from_config(
        cls, config: Config, userli: UserliClient, metrics: Metrics, redis_client: redis.Redis | None = None
    ) -> ResilientUserli:
        policy = Freshness(config.cache_ttl, config.negative_ttl, config.stale_ttl)
        memory = LookupCache(config.cache_size, config.recipient_delimiter)
        metrics.cache_entries.set_function(lambda: len(memory))
        breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown, on_change=_breaker_changed(metrics))
        shared = None
        if redis_client is not None:
            shared = RedisCache(redis_client, policy, on_error=lambda m: metrics.observe_cache(m, "error"))
        return cls(userli, metrics, policy, memory, breaker, shared)

    @property
    def cached_entries(self) -> int:
        return len(self._memory)

    async def can_serve_stale(self) -> bool:
        """Whether answers can still come from the cache while userli is unreachable."""
        if self._policy.stale_ttl <= 0:
            return False
        return len(self._memory) > 0 or (self._redis is not None and await self._redis.ping())

    def keys(self, map_name: str, raw_key: str) -> tuple[str, ...]:
        return self._memory.keys(map_name, raw_key)

    def reply_now(self, request: bytes) -> tuple[bytes, str, str] | None:
        """(reply, map, status) when a fresh entry answers this very request: the hot path."""
        hit = self._memory.reply_now(request, self._clock())
        if hit is not None:
            self._metrics.observe_cache(hit[1], "hit")
        return hit

    def lookup_now(self, map_name: str, key: str) -> Outcome | None:
        """A fresh answer from the in-process tier, or None."""
        return self._from_memory(map_name, key, self._clock())[0]

    async def lookup(self, map_name: str, key: str) -> Outcome:
        fresh, stale = self._from_memory(map_name, key, self._clock())
        if fresh is not None:
            return fresh
        if self._redis is not None:
            shared = await self._redis.get(map_name, key)
            if shared is not None:
                now = self._clock()
                entry = self._policy.entry(map_name, shared[0], now, age=shared[1], fresh_cap=self._first_tier_cap)
                if now < entry.fresh_until:
                    self._memory.put(map_name, key, entry)
                    self._metrics.observe_cache(map_name, "hit")
                    return entry.answer
                if now < entry.stale_until and (stale is None or entry.stale_until > stale.stale_until):
                    stale = entry
        self._metrics.observe_cache(map_name, "miss")
        outcome = await self._shared_call(map_name, key)
        if isinstance(outcome, Failure) and outcome.transient and stale is not None:
            self._metrics.observe_cache(map_name, "stale")
            self._note_stale(outcome)
            return stale.answer
        return outcome

    def _from_memory(self, map_name: str, key: str, now: float) -> tuple[Answer | None, Entry[Answer] | None]:
        """(a fresh answer, counted as a hit) or (None, an entry still usable as a stale fallback)."""
        entry = self._memory.get(map_name, key, now)
        if entry is None:
            return None, None
        if now < entry.fresh_until:
            self._metrics.observe_cache(map_name, "hit")
            return entry.answer, None
        return None, entry if now < entry.stale_until else None

    async def _shared_call(self, map_name: str, key: str) -> Outcome:
        cache_key = request_key(map_name, key)
        task = self._in_flight.get(cache_key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._call(map_name, key))
            self._in_flight[cache_key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(cache_key, None))
        else:
            self._metrics.observe_coalesced(map_name)
        # Shielded: one caller going away (its client disconnected) must not cancel the call
        # the others are waiting for, nor leave a half-open breaker without its probe result.
        return await asyncio.shield(task)

    async def _call(self, map_name: str, key: str) -> Outcome:
        if not self._breaker.allow():
            return BREAKER_OPEN
        outcome: Outcome = Failure("internal error")
        try:
            outcome = await self._userli.lookup(map_name, key)
        finally:
            self._breaker.record(not (isinstance(outcome, Failure) and outcome.transient))
        if isinstance(outcome, Failure):
            return outcome
        await self._store(map_name, key, outcome)
        return outcome

    async def _store(self, map_name: str, key: str, answer: Answer) -> None:
        """Remember userli's latest word. A "no" that is not to be kept still removes the old "yes"."""
        if self._policy.keep_for(map_name, answer) > 0:
            entry = self._policy.entry(map_name, answer, self._clock(), fresh_cap=self._first_tier_cap)
            self._memory.put(map_name, key, entry)
        else:
            self._memory.delete(map_name, key)
        if self._redis is not None:
            await self._redis.put(map_name, key, answer)

    def _note_stale(self, failure: Failure) -> None:
        self._stale_served += 1
        now = self._clock()
        if now - self._stale_reported_at >= STALE_REPORT_INTERVAL:
            log.warning(
                "answering from stale cache while userli fails",
                extra={"reason": failure.reason, "stale_answers_served": self._stale_served},
            )
            self._stale_reported_at, self._stale_served = now, 0


def _breaker_changed(metrics: Metrics) -> Callable[[BreakerState], None]:
    def changed(state: BreakerState) -> None:
        metrics.breaker_state.set(int(state))
        if state is BreakerState.OPEN:
            log.warning("circuit breaker open: not calling userli for a while")
        elif state is BreakerState.CLOSED:
            log.info("circuit breaker closed")

    return changed
