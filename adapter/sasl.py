"""SMTP AUTH for Postfix without Dovecot: the Dovecot authentication protocol, verified by userli.

Fail-closed: only userli's "success" yields OK. A wrong password (userli 401/403) is a FAIL, which
Postfix answers 535. Anything else (timeout, 5xx, garbage) must become 454, so that the client
tries again instead of doubting its password: Postfix (3.7, checked against the real smtpd)
ignores the ``temp`` flag of a FAIL and answers 535, but answers "454 4.7.0 Temporary
authentication failure" when the auth connection is lost mid-request. So a temporary failure is
answered by closing the connection, abortively (a TCP reset): smtpd only notices a dead auth
connection when a write to it fails, so after a graceful close its next AUTH would go into the
closed socket and get 454 too; after a reset that write fails at once and smtpd reconnects.
A token or scope that userli refuses is such a temporary failure, never "wrong password".
Failed attempts are answered only after SASL_FAILURE_DELAY, on that connection alone, to slow
down guessing. Passwords are never logged; usernames only when an authentication fails.

Logins are checked as typed (canonical: trimmed, lowercased), without stripping an address
extension: a login names an account, and ``user+tag@`` is an account of its own when an admin
created one. (The Go adapter strips the delimiter; see README, "Coming from the Go adapter".)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import time

from adapter.keys import address_key, canonical
from adapter.metrics import Metrics
from adapter.protocols.dovecot_auth import (
    AuthServerConnection,
    Challenge,
    Event,
    Rejected,
    Verify,
    fail,
    handshake,
    ok,
)
from adapter.userli import Authenticated, Failure, UserliClient

__all__ = ["Authenticator", "SaslSession"]

log = logging.getLogger("adapter.sasl")


class Authenticator:
    """Shared by all SASL connections: checks credentials with userli, counts, delays failures."""

    def __init__(self, userli: UserliClient, metrics: Metrics, timeout: float, failure_delay: float) -> None:
        self._userli = userli
        self._metrics = metrics
        self._timeout = timeout
        self._failure_delay = failure_delay
        self._connection_ids = itertools.count(1)

    def next_connection_id(self) -> int:
        return next(self._connection_ids)

    async def answer(self, event: Event) -> bytes | None:
        """The reply line, or None for a temporary failure (answered by closing the connection)."""
        if isinstance(event, Challenge):
            return event.data
        started = time.perf_counter()
        if isinstance(event, Rejected):
            reply = await self._failed(event.request_id, event.mechanism, event.reason, "", started)
        else:
            reply = await self._verify(event, started)
        return reply

    async def _verify(self, request: Verify, started: float) -> bytes | None:
        login = address_key(request.username)
        if login is None:  # can never be a userli account
            user = canonical(request.username)
            return await self._failed(request.request_id, request.mechanism, "authentication failed", user, started)
        outcome = await self._userli.authenticate(login, request.password, self._timeout)
        if isinstance(outcome, Authenticated):
            self._metrics.observe_sasl(request.mechanism, "success", time.perf_counter() - started)
            log.debug("authenticated", extra={"user": login, "mechanism": request.mechanism})
            return ok(request.request_id, login)
        if isinstance(outcome, Failure):
            # Logged by the userli client once per outage (an error when it is the token or scope).
            self._metrics.observe_sasl(request.mechanism, "error", time.perf_counter() - started)
            log.debug("authentication could not be checked", extra={"reason": outcome.reason})
            return None
        return await self._failed(request.request_id, request.mechanism, outcome.reason, login, started)

    async def _failed(self, request_id: str, mechanism: str, reason: str, user: str, started: float) -> bytes:
        self._metrics.observe_sasl(mechanism, "invalid_credentials", time.perf_counter() - started)
        log.info("authentication failed", extra={"user": user, "mechanism": mechanism, "reason": reason})
        await asyncio.sleep(self._failure_delay)  # only this connection waits
        return fail(request_id, reason, user)


class SaslSession:
    """One auth client connection (Postfix keeps one per smtpd process, for its lifetime)."""

    close_when_busy = True  # without the handshake Postfix cannot wait for a reply: close, it answers 454

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._protocol = AuthServerConnection()
        self.greeting = handshake(os.getpid(), authenticator.next_connection_id(), secrets.token_hex(16))

    @property
    def pending(self) -> bool:
        return self._protocol.pending

    def receive(self, data: bytes) -> list[Event]:
        return self._protocol.receive(data)  # AuthProtocolError: the server core closes the connection

    async def respond(self, event: Event) -> bytes | None:
        try:
            return await self._authenticator.answer(event)
        except Exception:
            log.exception("authentication failed unexpectedly")
            return None  # Postfix answers 454; never an OK

    def answer_now(self, request: object) -> None:
        return None  # every answer here may need userli or a store: always the ordered worker

    def busy(self, event: Event) -> bytes:
        return b""
