"""Per-user sending limits over sliding windows of one hour and one day.

Every checked message is recorded, refused ones too: a sender who keeps trying while over the
limit stays over it. A message of weight w (1, or its recipient count) is allowed when the
weights already recorded in each window plus w stay within that window's limit (0 = no limit).

Only the newest ``max(per_hour, per_day) + 1`` events of a sender are kept: each weighs at least 1,
so when older ones were dropped the kept ones alone exceed the limit, and every decision is the
same as with all events, while a sender hammering away while blocked costs bounded memory and
time per check.

Two stores with the same rule: in-process (one replica; lost on restart) and Redis (shared by
replicas, survives restarts; one atomic Lua script per check, keys expire a little after a day).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from adapter.userli import Quota

if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["DAY", "HOUR", "Decision", "MemoryRateLimiter", "RateLimitError", "RateLimiter", "RedisRateLimiter"]

HOUR = 3600.0
DAY = 86_400.0
KEY_TTL = 25 * 3600  # a little over the day window


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    last_hour: int  # weight recorded in the windows before this message
    last_day: int


def events_to_keep(quota: Quota) -> int:
    return max(quota.per_hour, quota.per_day) + 1


def decide(quota: Quota, last_hour: int, last_day: int, weight: int) -> Decision:
    allowed = (quota.per_hour == 0 or last_hour + weight <= quota.per_hour) and (
        quota.per_day == 0 or last_day + weight <= quota.per_day
    )
    return Decision(allowed, last_hour, last_day)


class RateLimitError(Exception):
    """The store could not be asked (Redis down): the caller fails open."""


class RateLimiter(Protocol):
    async def check(self, identity: str, quota: Quota, weight: int) -> Decision: ...


class MemoryRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._checks = 0

    @property
    def tracked(self) -> int:
        return len(self._events)

    async def check(self, identity: str, quota: Quota, weight: int) -> Decision:
        now = self._clock()
        events = self._events.setdefault(identity, deque())
        while events and events[0][0] <= now - DAY:
            events.popleft()
        last_day = sum(w for _, w in events)
        last_hour = sum(w for t, w in events if t > now - HOUR)
        events.append((now, weight))
        while len(events) > events_to_keep(quota):
            events.popleft()
        self._checks += 1
        if self._checks % 10_000 == 0:
            self._forget_idle(now)
        return decide(quota, last_hour, last_day, weight)

    def _forget_idle(self, now: float) -> None:
        """Drop identities with nothing left in the day window, so memory follows active senders."""
        for identity in [i for i, events in self._events.items() if not events or events[-1][0] <= now - DAY]:
            del self._events[identity]


# KEYS[1]: the identity's sorted set. ARGV: now, member, key ttl, events to keep.
# Members end in ':<weight>'.
_CHECK_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 86400)
local hour, day = 0, 0
local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local weight = tonumber(string.match(entries[i], ':(%d+)$')) or 1
  day = day + weight
  if tonumber(entries[i + 1]) > now - 3600 then hour = hour + weight end
end
redis.call('ZADD', key, now, ARGV[2])
local excess = redis.call('ZCARD', key) - tonumber(ARGV[4])
if excess > 0 then redis.call('ZREMRANGEBYRANK', key, 0, excess - 1) end
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return {hour, day}
"""


class RedisRateLimiter:
    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        from adapter.redis_client import ERRORS  # redis-py only where Redis is configured

        self._errors = ERRORS
        self._client = client
        self._clock = clock
        self._script = client.register_script(_CHECK_SCRIPT)

    @staticmethod
    def key(identity: str) -> str:
        return f"userli:ratelimit:{identity}"

    async def check(self, identity: str, quota: Quota, weight: int) -> Decision:
        now = self._clock()
        member = f"{now:.6f}:{uuid.uuid4().hex[:12]}:{weight}"
        try:
            last_hour, last_day = await self._script(
                keys=[self.key(identity)], args=[now, member, KEY_TTL, events_to_keep(quota)]
            )
        except self._errors as exc:
            raise RateLimitError(exc.__class__.__name__) from exc
        return decide(quota, int(last_hour), int(last_day), weight)
