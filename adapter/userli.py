"""The one client of the userli API. It turns every HTTP outcome into an ``Outcome``:

* ``Found``: userli answered 200 with a non-empty list or ``true``;
* ``NotFound``: userli answered 200 with ``[]`` or ``false`` -- the only "no" there is;
* ``Failure``: anything else (timeout, refused, non-200, non-JSON, wrong JSON type).

Handlers never look at HTTP. A failure is never a "no": it becomes TEMP for Postfix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from adapter import __version__
from adapter.config import Config
from adapter.metrics import Metrics

__all__ = ["BOOL_MAPS", "ENDPOINTS", "LIST_MAPS", "Failure", "Found", "NotFound", "Outcome", "UserliClient"]

log = logging.getLogger("adapter.userli")

LIST_MAPS = ("alias", "senders")  # 200 body: JSON list of addresses
BOOL_MAPS = ("domain", "mailbox")  # 200 body: JSON true / false
ENDPOINTS = (*LIST_MAPS, *BOOL_MAPS)
READY_PROBE_DOMAIN = "health-check.invalid"  # a cheap lookup that userli can answer from its cache


@dataclass(frozen=True, slots=True)
class Found:
    values: tuple[str, ...]  # ("1",) for a true boolean answer


@dataclass(frozen=True, slots=True)
class NotFound:
    pass


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str  # short and safe to send to Postfix: no key, token or URL in it
    # True for outage-like failures (timeout, refused, 5xx, garbage): worth a stale answer and
    # counted by the circuit breaker. False for 4xx: a configuration error to surface, not hide.
    transient: bool = True


Outcome = Found | NotFound | Failure
NOT_FOUND = NotFound()
TRUE = Found(("1",))


class UserliClient:
    def __init__(self, http: httpx.AsyncClient, metrics: Metrics, timeout: float) -> None:
        self._http = http
        self._metrics = metrics
        self._timeout = timeout

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics) -> UserliClient:
        # One connection per socketmap connection at most: a listener connection never waits for
        # a pool slot (each connection has at most one userli call in flight).
        limits = httpx.Limits(
            max_connections=config.max_connections + 1,  # + the readiness probe
            max_keepalive_connections=config.max_connections + 1,
            keepalive_expiry=30.0,
        )
        http = httpx.AsyncClient(
            base_url=config.userli_base_url,
            headers={
                "Authorization": f"Bearer {config.userli_token}",
                "Accept": "application/json",
                "User-Agent": f"userli-postfix-adapter/{__version__}",
            },
            timeout=httpx.Timeout(config.userli_timeout),
            limits=limits,
            follow_redirects=False,
            trust_env=False,  # the userli URL is configured explicitly; no proxy from the environment
        )
        return cls(http, metrics, config.userli_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def lookup(self, map_name: str, key: str, timeout: float | None = None) -> Outcome:
        """``GET /api/postfix/{map_name}/{key}``; ``key`` must already be canonical."""
        # The key is one path segment: '/', '?', '#', '%' and non-ASCII are percent-encoded, and
        # keys.py never lets '.' or '..' through, so no key can reach another path.
        path = f"/api/postfix/{map_name}/{quote(key, safe='@')}"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout or self._timeout):
                response = await self._http.get(path)
        except (TimeoutError, httpx.TimeoutException):
            return self._failed(map_name, started, "userli timeout")
        except httpx.HTTPError as exc:
            return self._failed(map_name, started, "userli unreachable", exc.__class__.__name__)
        status = response.status_code
        self._metrics.observe_http(map_name, status, time.perf_counter() - started)
        if status != 200:
            log.debug("userli answered an error status", extra={"map": map_name, "status": status})
            return Failure(f"userli status {status}", transient=status >= 500)
        return _decode(map_name, response.content)

    async def ready(self, timeout: float) -> Outcome:
        return await self.lookup("domain", READY_PROBE_DOMAIN, timeout=timeout)

    def _failed(self, map_name: str, started: float, reason: str, error: str = "") -> Failure:
        self._metrics.observe_http(map_name, None, time.perf_counter() - started)
        log.debug("userli request failed", extra={"map": map_name, "reason": reason, "error": error or reason})
        return Failure(reason)


def _decode(map_name: str, body: bytes) -> Outcome:
    try:
        data = json.loads(body)
    except ValueError:
        return Failure("userli sent invalid JSON")
    if map_name in BOOL_MAPS:
        if data is True:
            return TRUE
        if data is False:
            return NOT_FOUND
    elif isinstance(data, list) and all(isinstance(item, str) and item for item in data):
        return Found(tuple(data)) if data else NOT_FOUND
    return Failure("userli sent unexpected data")
