"""``userli-postfix-adapter lookup MAP KEY`` and ``auth LOGIN``: what Postfix would get, shown
step by step, through the very code a running adapter uses."""

from __future__ import annotations

import time

from adapter.config import Config
from adapter.lookups import MAP_NAMES, Lookups
from adapter.metrics import Metrics
from adapter.protocols.netstring import NetstringDecoder
from adapter.resilience import ResilientUserli
from adapter.userli import ENDPOINTS, Authenticated, Failure, Refused, UserliClient

__all__ = ["auth", "lookup"]


class _Traced(Metrics):
    """The metrics every userli call reports to, printed as they come: the status and the time
    of each request, from the client's own measurement."""

    def observe_http(self, endpoint: str, status: int | None, seconds: float) -> None:
        super().observe_http(endpoint, status, seconds)
        answer = f"HTTP {status}" if status is not None else "no response"
        print(f"  userli {endpoint}: {answer} in {seconds * 1000:.1f} ms")

    def observe_cache(self, handler: str, result: str) -> None:
        super().observe_cache(handler, result)
        print(f"  cache: {result}")


async def lookup(config: Config, map_name: str, key: str) -> int:
    """Exit 0 when Postfix would get OK, 1 for NOTFOUND, 2 for TEMP or PERM."""
    metrics = _Traced(handlers=MAP_NAMES, endpoints=ENDPOINTS)
    client = UserliClient.from_config(config, metrics)
    redis = None
    if config.redis_url:
        from adapter.redis_client import connect  # redis-py only where Redis is configured

        redis = connect(config.redis_url)
    # A process of its own has an empty in-process cache; Redis, when configured, is the shared one.
    resilient = ResilientUserli.from_config(config, client, metrics, redis)
    try:
        keys = resilient.keys(map_name, key) if map_name in MAP_NAMES else ()
        print(f"map {map_name}, key {key!r}")
        print(f"  canonical keys, in order: {', '.join(keys) if keys else 'none (answered without userli)'}")
        started = time.perf_counter()
        reply = await Lookups(resilient, metrics).answer(f"{map_name} {key}".encode())
        payload = NetstringDecoder(len(reply)).feed(reply)[0].decode()
        took = (time.perf_counter() - started) * 1000
        print(f"reply to Postfix: {payload!r} ({reply.decode()!r} on the wire) after {took:.1f} ms")
    finally:
        await client.aclose()
        if redis is not None:
            await redis.aclose()
    word = payload.split(" ", 1)[0]
    return 0 if word == "OK" else 1 if word == "NOTFOUND" else 2


async def auth(config: Config, login: str, password: str) -> int:
    """Exit 0 when Postfix would answer 235, 1 for 535, 2 for 454."""
    metrics = _Traced(handlers=MAP_NAMES, endpoints=ENDPOINTS)
    client = UserliClient.from_config(config, metrics)
    try:
        print(f"login {login!r} (the password is not shown)")
        outcome = await client.authenticate(login, password, config.sasl_timeout)
    finally:
        await client.aclose()
    if isinstance(outcome, Authenticated):
        print("Postfix would answer: 235 Authentication successful")
        return 0
    if isinstance(outcome, Refused):
        print(f"Postfix would answer: 535 Authentication failed (userli: {outcome.reason})")
        return 1
    assert isinstance(outcome, Failure)
    hint = f"; {outcome.hint}" if outcome.hint else ""
    print(f"Postfix would answer: 454 temporary authentication failure ({outcome.reason}{hint})")
    return 2
