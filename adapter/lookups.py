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


class _Plan:
    """What one request payload means, worked out once: the handler label, the canonical keys to
    ask (in order) or a fixed reply for a request we cannot serve, and the last reply built for
    an answer, reused while the cache hands out the same answer object."""

    __slots__ = ("answered", "handler", "keys", "rejection", "reply")

    def __init__(self, handler: str, keys: tuple[str, ...], rejection: bytes | None = None) -> None:
        self.handler, self.keys, self.rejection = handler, keys, rejection
        self.answered: Outcome | None = None
        self.reply: tuple[bytes, str] = (b"", "")


class Lookups:
    """Answers one socketmap request, whatever userli does, with exactly one reply.

    A cache hit is the common case (Postfix asks the same few maps about the same addresses over
    and over), so the pure part of a request, parsing and key canonicalisation, is remembered per
    payload, and so is the encoded reply per cached answer: a hit then costs a few dictionary
    lookups (bench/README). What is fresh is decided by the lookup cache alone: a remembered
    reply is used only while the cache hands out the very answer object it was built from.

    The memo holds about as many payloads as the lookup cache holds keys, in two generations:
    payloads met since the last turn, and those of the turn before; a turn comes when the young
    one is full. A payload still in use is carried into the young generation when met, so a hit
    costs the same with a thousand addresses as with a million (an earlier memo of 10,000 was
    simply emptied when full: 7-11x slower hits past that, issue 15).
    """

    MAX_PLANNED_PAYLOAD = 256  # longer payloads (never a real address) are worked out every time

    def __init__(self, userli: LookupSource, metrics: Metrics, delimiters: str = "", size: int = 100_000) -> None:
        self._userli = userli
        self._metrics = metrics
        self._delimiters = delimiters
        self._size = max(size, 1)  # payloads per generation
        self._plans: dict[bytes, _Plan] = {}  # the young generation
        self._older: dict[bytes, _Plan] = {}

    def answer_now(self, payload: bytes) -> bytes | None:
        """The reply when it needs no userli call (a cached answer, a local rule), else None."""
        started = time.perf_counter()
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
        plan = self._plans.get(payload)
        if plan is not None:
            return plan
        plan = self._older.get(payload)
        if plan is not None:  # still in use: into the young generation
            self._remember(payload, plan)
            return plan
        return self._work_out(payload)

    def _remember(self, payload: bytes, plan: _Plan) -> None:
        if len(self._plans) >= self._size:
            self._older, self._plans = self._plans, {}
        self._plans[payload] = plan

    def _work_out(self, payload: bytes) -> _Plan:
        request = socketmap.parse_request(payload)
        if request.name not in MAP_NAMES:
            plan = _Plan("unknown", (), socketmap.perm("unknown map name"))
        elif request.key is None:
            plan = _Plan(request.name, (), socketmap.perm("request without a key"))
        else:
            domain_only = request.name == "domain"
            plan = _Plan(request.name, lookup_keys(request.key, self._delimiters, domain_only=domain_only))
        if len(payload) <= self.MAX_PLANNED_PAYLOAD:
            self._remember(payload, plan)
        return plan

    def _rejected(self, plan: _Plan, started: float) -> bytes:
        self._metrics.observe_request(plan.handler, "error", time.perf_counter() - started)
        return plan.rejection  # type: ignore[return-value]  # callers checked it is set

    def _finish(self, plan: _Plan, outcome: Outcome, started: float) -> bytes:
        if outcome is plan.answered:
            reply, status = plan.reply
        else:
            reply, status = self._reply(plan.handler, outcome)
            if not isinstance(outcome, Failure):  # answers are cached objects; failures are not
                plan.answered, plan.reply = outcome, (reply, status)
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
