"""Socketmap lookups: map name -> canonical keys -> userli -> one socketmap reply.

``SocketmapSession`` is what the server core drives for each client connection; everything
protocol-specific lives in ``adapter.protocols``, everything HTTP-specific in ``adapter.userli``.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from adapter.keys import lookup_keys
from adapter.metrics import Metrics
from adapter.protocols import socketmap
from adapter.protocols.netstring import NetstringDecoder
from adapter.userli import MAPS, NOT_FOUND, Failure, Found, NotFound, Outcome

__all__ = ["MAP_NAMES", "LookupSource", "Lookups", "SocketmapSession"]

log = logging.getLogger("adapter.lookups")

MAP_NAMES = MAPS
MAX_REQUEST = 10_000  # bytes of one request netstring; real keys are a few hundred at most
BUSY = socketmap.temp("server busy")
INTERNAL_ERROR = socketmap.temp("internal error")


class LookupSource(Protocol):
    """Where answers come from: the userli client itself, or the cached, resilient layer over it."""

    async def lookup(self, map_name: str, key: str) -> Outcome: ...

    def lookup_now(self, map_name: str, key: str) -> Outcome | None: ...  # without I/O, or None


class Lookups:
    """Answers one socketmap request, whatever userli does, with exactly one reply."""

    def __init__(self, userli: LookupSource, metrics: Metrics, delimiters: str = "") -> None:
        self._userli = userli
        self._metrics = metrics
        self._delimiters = delimiters

    def answer_now(self, payload: bytes) -> bytes | None:
        """The reply when it needs no userli call (a cached answer, a local rule), else None."""
        started = time.perf_counter()
        request = socketmap.parse_request(payload)
        if request.name not in MAP_NAMES or request.key is None:
            return self._rejected(request, started)
        outcome: Outcome = NOT_FOUND
        for key in self._keys(request.name, request.key):
            known = self._userli.lookup_now(request.name, key)
            if known is None:
                return None  # the async path does the whole request again, with I/O
            outcome = known
            if not isinstance(outcome, NotFound):
                break
        return self._finish(request.name, outcome, started)

    async def answer(self, payload: bytes) -> bytes:
        started = time.perf_counter()
        request = socketmap.parse_request(payload)
        if request.name not in MAP_NAMES or request.key is None:
            return self._rejected(request, started)
        return self._finish(request.name, await self.resolve(request.name, request.key), started)

    async def resolve(self, map_name: str, raw_key: str) -> Outcome:
        """The userli answer for a raw key, with Postfix's extension fallback."""
        outcome: Outcome = NOT_FOUND
        for key in self._keys(map_name, raw_key):
            outcome = await self._userli.lookup(map_name, key)
            if not isinstance(outcome, NotFound):
                break
        return outcome

    def _keys(self, map_name: str, raw_key: str) -> tuple[str, ...]:
        return lookup_keys(raw_key, self._delimiters, domain_only=map_name == "domain")

    def _rejected(self, request: socketmap.Request, started: float) -> bytes:
        if request.name not in MAP_NAMES:
            reply, handler = socketmap.perm("unknown map name"), "unknown"
        else:
            reply, handler = socketmap.perm("request without a key"), request.name
        self._metrics.observe_request(handler, "error", time.perf_counter() - started)
        return reply

    def _finish(self, handler: str, outcome: Outcome, started: float) -> bytes:
        reply, status = self._reply(handler, outcome)
        self._metrics.observe_request(handler, status, time.perf_counter() - started)
        return reply

    @staticmethod
    def _reply(handler: str, outcome: Outcome) -> tuple[bytes, str]:
        if isinstance(outcome, Found):
            try:
                return socketmap.ok(",".join(outcome.values)), "success"
            except socketmap.ReplyTooLarge as exc:
                log.error("userli answer too large for Postfix", extra={"map": handler, "error": str(exc)})
                return socketmap.perm("reply too large"), "error"
        if isinstance(outcome, Failure):
            return socketmap.temp(outcome.reason), "error"
        return socketmap.notfound(), "notfound"


class SocketmapSession:
    """One socketmap client connection: netstrings in, ordered replies out."""

    greeting = b""
    close_when_busy = False

    def __init__(self, lookups: Lookups) -> None:
        self._lookups = lookups
        self._decoder = NetstringDecoder(MAX_REQUEST)

    @property
    def pending(self) -> bool:
        return self._decoder.pending

    def receive(self, data: bytes) -> list[bytes]:
        return self._decoder.feed(data)  # NetstringError: the server core closes the connection

    def answer_now(self, request: bytes) -> bytes | None:
        try:
            return self._lookups.answer_now(request)
        except Exception:
            return None  # let the async path answer it, and log whatever goes wrong there

    async def respond(self, request: bytes) -> bytes:
        try:
            return await self._lookups.answer(request)
        except Exception:
            # A bug must still defer mail, not drop the connection without an answer.
            log.exception("lookup failed unexpectedly")
            return INTERNAL_ERROR

    def busy(self, request: bytes) -> bytes:
        return BUSY
