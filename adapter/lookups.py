"""Socketmap lookups: map name -> canonical keys -> userli -> one socketmap reply.

``SocketmapSession`` is what the server core drives for each socketmap client connection, and
``TcpTableSession`` the same lookups for a tcp_table(5) listener serving one map; everything
protocol-specific lives in ``adapter.protocols``, everything HTTP-specific in ``adapter.userli``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from adapter.metrics import Metrics
from adapter.protocols import socketmap, tcp_table
from adapter.protocols.lines import LineReader
from adapter.protocols.netstring import NetstringDecoder
from adapter.userli import MAPS, NOT_FOUND, Failure, Found, NotFound, Outcome

__all__ = ["MAP_NAMES", "LookupSource", "Lookups", "SocketmapSession", "TcpTableSession"]

log = logging.getLogger("adapter.lookups")

MAP_NAMES = MAPS
MAX_REQUEST = 10_000  # bytes of one request netstring; real keys are a few hundred at most
BUSY = socketmap.temp("server busy")
INTERNAL_ERROR = socketmap.temp("internal error")


class LookupSource(Protocol):
    """Where answers come from: the userli client itself, or the cached, resilient layer over it."""

    def keys(self, map_name: str, raw_key: str) -> tuple[str, ...]: ...  # canonical keys, in order

    async def lookup(self, map_name: str, key: str) -> Outcome: ...

    def lookup_now(self, map_name: str, key: str) -> Outcome | None: ...  # without I/O, or None

    def reply_now(self, request: bytes) -> tuple[bytes, str, str] | None: ...  # (reply, map, status)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one request means: the handler label, and the canonical keys to ask (in order) or a
    fixed reply for a request we cannot serve."""

    handler: str
    keys: tuple[str, ...]
    rejection: bytes | None = None


class Lookups:
    """Answers one socketmap request, whatever userli does, with exactly one reply.

    A cache hit is the common case (Postfix asks the same few maps about the same addresses over
    and over): the lookup cache keeps the encoded reply with each answer, keyed by the request
    Postfix sends for it, so a hit for a request in canonical form is one dict lookup whatever
    the number of addresses (adapter/lookup_cache.py). Any other request is parsed and its keys
    worked out again: a few microseconds, with nothing remembered beside the cache that could
    disagree with it.
    """

    def __init__(self, userli: LookupSource, metrics: Metrics) -> None:
        self._userli = userli
        self._metrics = metrics

    def answer_now(self, payload: bytes) -> bytes | None:
        """The reply when it needs no userli call (a cached answer, a local rule), else None."""
        started = time.perf_counter()
        hit = self._userli.reply_now(payload)
        if hit is not None:
            self._metrics.observe_request(hit[1], hit[2], time.perf_counter() - started)
            return hit[0]
        plan = self._plan(payload)
        if plan.rejection is not None:
            return self._rejected(plan, started)
        outcome: Outcome = NOT_FOUND
        for key in plan.keys:
            known = self._userli.lookup_now(plan.handler, key)
            if known is None:
                return None  # the async path does the whole request again, with I/O
            outcome = known
            if not isinstance(outcome, NotFound):
                break
        return self._finish(plan, outcome, started)

    async def answer(self, payload: bytes) -> bytes:
        started = time.perf_counter()
        plan = self._plan(payload)
        if plan.rejection is not None:
            return self._rejected(plan, started)
        outcome: Outcome = NOT_FOUND
        for key in plan.keys:
            outcome = await self._userli.lookup(plan.handler, key)
            if not isinstance(outcome, NotFound):
                break
        return self._finish(plan, outcome, started)

    def _plan(self, payload: bytes) -> _Plan:
        request = socketmap.parse_request(payload)
        if request.name not in MAP_NAMES:
            return _Plan("unknown", (), socketmap.perm("unknown map name"))
        if request.key is None:
            return _Plan(request.name, (), socketmap.perm("request without a key"))
        return _Plan(request.name, self._userli.keys(request.name, request.key))

    def _rejected(self, plan: _Plan, started: float) -> bytes:
        self._metrics.observe_request(plan.handler, "error", time.perf_counter() - started)
        return plan.rejection  # type: ignore[return-value]  # callers checked it is set

    def _finish(self, plan: _Plan, outcome: Outcome, started: float) -> bytes:
        reply, status = self._reply(plan.handler, outcome)
        self._metrics.observe_request(plan.handler, status, time.perf_counter() - started)
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


class TcpTableSession:
    """One tcp_table(5) client connection of a listener serving ``map_name``: a socketmap session
    underneath (keys, cache, stale answers, failures, metrics), in tcp_table's codec."""

    greeting = b""
    close_when_busy = False

    def __init__(self, lookups: Lookups, map_name: str) -> None:
        self._socketmap = SocketmapSession(lookups)
        self._prefix = map_name.encode() + b" "
        self._lines = LineReader(tcp_table.MAX_REQUEST, tcp_table.TcpTableError)

    @property
    def pending(self) -> bool:
        return self._lines.pending

    def receive(self, data: bytes) -> list[bytes]:
        return self._lines.feed(data)  # TcpTableError: the server core closes the connection

    def answer_now(self, request: bytes) -> bytes | None:
        key = tcp_table.parse_request(request)
        if key is None:
            return tcp_table.temporary("unsupported request")
        reply = self._socketmap.answer_now(self._prefix + key)
        return None if reply is None else _tcp_table_reply(reply)

    async def respond(self, request: bytes) -> bytes:
        key = tcp_table.parse_request(request)
        if key is None:
            return tcp_table.temporary("unsupported request")
        return _tcp_table_reply(await self._socketmap.respond(self._prefix + key))

    def busy(self, request: bytes) -> bytes:
        return tcp_table.temporary("server busy")


def _tcp_table_reply(socketmap_reply: bytes) -> bytes:
    """The same answer in tcp_table's words: OK -> 200, NOTFOUND -> 500, TEMP and PERM -> 400."""
    payload = socketmap_reply[socketmap_reply.index(b":") + 1 : -1]
    word, _, text = payload.partition(b" ")
    if word == b"OK":
        return tcp_table.found(text)
    if word == b"NOTFOUND":
        return tcp_table.not_found()
    return tcp_table.temporary(text.decode("utf-8", errors="replace"))
