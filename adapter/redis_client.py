"""The one Redis connection of the service, shared by the lookup cache and the rate limiter.

Redis is a helper, never a dependency of a lookup: short timeouts and no retries, so a slow or
dead Redis costs at most half a second before the caller goes on without it.

This module, and with it redis-py, is imported only when REDIS_URL is set: importing redis-py
costs about 7 MB of memory, a tenth of the adapter's, that a deployment without Redis should not
pay (the Redis tiers import ``ERRORS`` from here when they are built).
"""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["ERRORS", "REDIS_TIMEOUT", "connect"]

REDIS_TIMEOUT = 0.5
ERRORS = (redis.RedisError, OSError)  # what a Redis call raises when Redis is unavailable


def connect(url: str) -> redis.Redis:
    return redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),  # redis-py retries 3 times by default; a lookup cannot wait
        decode_responses=True,
    )
