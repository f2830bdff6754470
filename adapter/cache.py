"""Lookup caches: a bounded in-process tier (lookup_cache.py) and an optional shared Redis tier.

Both store the last known answer of userli per (map, canonical key) and say how old it is; the
``Freshness`` policy decides what an age means:

* a positive answer (``OK ...``) is *fresh* for LOOKUP_CACHE_TTL and may be served *stale*, only
  while userli is failing, until LOOKUP_STALE_TTL;
* a NOTFOUND is fresh for LOOKUP_NEGATIVE_TTL (default 0). It replaces any positive entry, so a
  deleted address cannot come back from the cache. Only NOTFOUNDs of the maps in
  ``STALE_NOTFOUND_MAPS`` may stand in while userli fails: "not an alias" never bounces mail on its
  own (Postfix goes on to the mailbox map), yet Postfix asks the alias map for every recipient, so
  without it no mail at all could be accepted during an outage. A NOTFOUND of the mailbox, domain
  or senders map is what rejects mail; those are never served stale.

Redis holds the socketmap reply itself (``OK a,b`` / ``NOTFOUND ``) under
``userli:pyadapter:lookup:<map>:<key>`` with a TTL equal to how long the entry is kept; the age is that
keep time minus the remaining TTL, so one GET and one PTTL tell everything. Redis errors never
fail a lookup: the tier steps aside for a moment and the error is counted (the client's
short timeouts are in redis_client.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from adapter.userli import NOT_FOUND, Found, NotFound

if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["STALE_NOTFOUND_MAPS", "Answer", "Entry", "Freshness", "Generations", "MemoryCache", "RedisCache"]

log = logging.getLogger("adapter.cache")

Answer = Found | NotFound  # what the lookup cache holds; failures are never cached
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

REDIS_BACKOFF = 2.0  # after a Redis error, lookups skip Redis for this long
# Not the Go adapter's "userli:lookup:": there the same key holds only OK replies, kept for
# LOOKUP_CACHE_TTL and served as fresh; ours are kept for the stale window and include NOTFOUND.
# A Go instance in a mixed fleet, or after a rollback, would serve ours as fresh for 24 h.
KEY_PREFIX = "userli:pyadapter:lookup:"


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    answer: T
    fresh_until: float  # clock time until which the answer is served without asking userli
    stale_until: float  # clock time until which it may stand in while userli fails (OK only)


STALE_NOTFOUND_MAPS = frozenset({"alias"})


@dataclass(frozen=True, slots=True)
class Freshness:
    ttl: float
    negative_ttl: float
    stale_ttl: float

    def _lifetimes(self, map_name: str, answer: Answer) -> tuple[float, float]:
        """(fresh for, usable stale until) in seconds from when userli answered."""
        if isinstance(answer, Found):
            return self.ttl, self.stale_ttl
        return self.negative_ttl, self.stale_ttl if map_name in STALE_NOTFOUND_MAPS else 0.0

    def keep_for(self, map_name: str, answer: Answer) -> float:
        """How long to keep an answer at all; 0 means do not store it."""
        return max(self._lifetimes(map_name, answer))

    def entry(
        self, map_name: str, answer: Answer, now: float, age: float = 0.0, fresh_cap: float = math.inf
    ) -> Entry[Answer]:
        """An entry for an answer that is ``age`` seconds old; ``fresh_cap`` shortens its freshness."""
        fresh, stale = self._lifetimes(map_name, answer)
        return Entry(answer, now + min(fresh - age, fresh_cap), now + stale - age)


class Generations(Generic[K, V]):
    """A bounded map: a flood of new keys evicts old entries instead of growing.

    Least recently used, approximately, in two generations of ``size`` entries each: entries
    stored or used since the last turn, and those of the turn before. A turn, when the young
    generation is full, drops the old one whole; an entry of the old generation that is used is
    carried into the young one. So every one of the ``size`` most recently used entries is kept,
    and a flood of new keys holds at most twice as many before the older half goes. A hit is one
    or two plain dict lookups with nothing reordered (an OrderedDict's move_to_end on every hit
    made a hit 3-4x slower with a million entries than with a thousand: bench/hotpath.py).
    """

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, key: K) -> V | None:
        value = self._young.get(key)
        if value is None:
            value = self._old.pop(key, None)
            if value is not None:
                self._store(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        self._old.pop(key, None)
        self._store(key, value)

    def _store(self, key: K, value: V) -> None:
        if key not in self._young and len(self._young) >= self._size:
            self._old, self._young = self._young, {}
        self._young[key] = value

    def delete(self, key: K) -> None:
        self._young.pop(key, None)
        self._old.pop(key, None)


class MemoryCache(Generic[T]):
    """Entries that are dropped once neither fresh nor usable stale (the policy's quota cache)."""

    def __init__(self, size: int) -> None:
        self._entries: Generations[str, Entry[T]] = Generations(size)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Entry[T] | None:
        entry = self._entries.get(key)
        if entry is not None and now >= entry.fresh_until and now >= entry.stale_until:
            self._entries.delete(key)
            return None
        return entry

    def put(self, key: str, entry: Entry[T]) -> None:
        self._entries.put(key, entry)


def encode(answer: Answer) -> str:
    return "OK " + ",".join(answer.values) if isinstance(answer, Found) else "NOTFOUND "


def decode(value: str) -> Answer | None:
    if value.startswith("OK ") and len(value) > 3:
        return Found(tuple(value[3:].split(",")))
    return NOT_FOUND if value == "NOTFOUND " else None


class RedisCache:
    """The shared tier. Every method swallows Redis errors: they cost a count, never a lookup."""

    def __init__(
        self,
        client: redis.Redis,
        policy: Freshness,
        on_error: Callable[[str], None] = lambda map_name: None,  # a lookup went on without Redis
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from adapter.redis_client import ERRORS  # redis-py only where Redis is configured

        self._errors = ERRORS
        self._client = client
        self._policy = policy
        self._on_error = on_error
        self._clock = clock
        self._skip_until = 0.0

    @staticmethod
    def key(map_name: str, key: str) -> str:
        return f"{KEY_PREFIX}{map_name}:{key}"

    async def get(self, map_name: str, key: str) -> tuple[Answer, float] | None:
        """The stored answer and its age, or None (absent, unreadable, or Redis unavailable)."""
        if self._skipping():
            return None
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                value, pttl = await pipe.get(self.key(map_name, key)).pttl(self.key(map_name, key)).execute()
        except self._errors as exc:
            self._failed(exc, map_name)
            return None
        answer = decode(value) if isinstance(value, str) else None
        if answer is None or pttl is None or pttl < 0:
            return None
        return answer, max(0.0, self._policy.keep_for(map_name, answer) - pttl / 1000)

    async def put(self, map_name: str, key: str, answer: Answer) -> None:
        """Store the latest answer, or drop the key when this answer is not to be kept."""
        if self._skipping():
            return
        keep = self._policy.keep_for(map_name, answer)
        try:
            if keep > 0:
                await self._client.set(self.key(map_name, key), encode(answer), px=max(1, int(keep * 1000)))
            else:
                await self._client.delete(self.key(map_name, key))
        except self._errors as exc:
            self._failed(exc, map_name)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except self._errors as exc:
            self._failed(exc)
            return False

    def _skipping(self) -> bool:
        return self._clock() < self._skip_until

    def _failed(self, exc: BaseException, map_name: str | None = None) -> None:
        if not self._skipping():
            log.warning("redis unavailable; using the in-process cache", extra={"error": exc.__class__.__name__})
        self._skip_until = self._clock() + REDIS_BACKOFF
        if map_name is not None:
            self._on_error(map_name)
