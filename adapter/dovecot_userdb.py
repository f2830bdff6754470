"""Dovecot's userdb through its dict proxy (``userdb { driver = dict }``), served from userli.

Dovecot asks ``L shared/userdb/<user>``; the answer is userli's ``GET /api/dovecot/{email}`` as
a JSON userdb, the attributes userli's own Lua script sets: ``user``, the quota as a quota rule,
and the MailCrypt public key with ``mail_crypt_save_version`` when MailCrypt is on for the user;
plus ``home`` and ``mail`` from templates. An unknown user is not found; a failure is ``F``,
which Dovecot treats as a temporary failure (LMTP answers 451), never "user unknown" (550, a
bounce). Answers are cached like the lookups: a user is served for LOOKUP_CACHE_TTL, and while
userli fails the last answer stands in for up to LOOKUP_STALE_TTL, so deliveries go on during an
outage; "not found" is never served stale. Passwords cannot travel through a dict: passdb and
MailCrypt's private keys stay with userli's Lua passdb.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from adapter.cache import Entry, MemoryCache
from adapter.config import Config
from adapter.keys import address_key
from adapter.protocols import dovecot_dict
from adapter.protocols.lines import LineReader
from adapter.userli import NOT_FOUND, DovecotUser, Failure, NotFound, UserliClient

__all__ = ["DovecotDictSession", "Userdb"]

log = logging.getLogger("adapter.dovecot_userdb")

USERDB_PREFIX = "shared/userdb/"


class Userdb:
    def __init__(self, config: Config, userli: UserliClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._userli = userli
        self._clock = clock
        self._ttl, self._negative_ttl, self._stale_ttl = config.cache_ttl, config.negative_ttl, config.stale_ttl
        self._cache: MemoryCache[DovecotUser | NotFound] = MemoryCache(config.cache_size)
        self._home, self._mail = config.dovecot_home_template, config.dovecot_mail_template

    async def lookup(self, user: str) -> DovecotUser | NotFound | Failure:
        key = address_key(user)
        if key is None or "@" not in key:
            return NOT_FOUND  # can never be a userli account (and "status" is another route)
        now = self._clock()
        cached = self._cache.get(key, now)
        if cached is not None and now < cached.fresh_until:
            return cached.answer
        outcome = await self._userli.dovecot_user(key)
        if isinstance(outcome, Failure):
            if outcome.transient and cached is not None and now < cached.stale_until:
                return cached.answer  # the last known user, while userli fails
            return outcome
        now = self._clock()
        if isinstance(outcome, DovecotUser):
            self._cache.put(key, Entry(outcome, now + self._ttl, now + self._stale_ttl))
        else:  # replaces a known user at once; kept only for LOOKUP_NEGATIVE_TTL, never stale
            self._cache.put(key, Entry(outcome, now + self._negative_ttl, now))
        return outcome

    def attributes(self, user: DovecotUser) -> dict[str, str]:
        attributes = {"user": user.user}
        if self._home:
            attributes["home"] = expand(self._home, user.user)
        if self._mail:
            attributes["mail"] = expand(self._mail, user.user)
        if user.quota:
            attributes["quota_rule"] = f"*:storage={user.quota}"
        if user.mailcrypt_public_key:
            attributes["mail_crypt_global_public_key"] = user.mailcrypt_public_key
            attributes["mail_crypt_save_version"] = "2"
        return attributes


def expand(template: str, user: str) -> str:
    """Dovecot's ``%u`` (the user), ``%n`` (its local part), ``%d`` (its domain), ``%%``."""
    local, _, domain = user.rpartition("@")
    values = {"u": user, "n": local, "d": domain, "%": "%"}
    out, chars = [], iter(template)
    for c in chars:
        out.append(values.get(next(chars, ""), "") if c == "%" else c)
    return "".join(out)


class DovecotDictSession:
    """One dict client connection: a hello, then lookups; iterations are empty, writes refused."""

    greeting = b""
    close_when_busy = False

    def __init__(self, userdb: Userdb) -> None:
        self._userdb = userdb
        self._lines = LineReader(dovecot_dict.MAX_LINE, dovecot_dict.DictProtocolError)
        self._hello = False

    @property
    def pending(self) -> bool:
        return self._lines.pending

    def receive(self, data: bytes) -> list[dovecot_dict.Command]:
        """The commands completed by ``data``; a missing hello or an empty line raises
        DictProtocolError, and the server core closes the connection."""
        lines = self._lines.feed(data)
        if lines and not self._hello:
            if not lines[0].startswith(b"H"):
                raise dovecot_dict.DictProtocolError("no hello")
            self._hello = True
            lines = lines[1:]
        return [dovecot_dict.parse(line) for line in lines]

    def answer_now(self, command: dovecot_dict.Command) -> bytes | None:
        if command.name == "L":
            return None if command.args[0].startswith(USERDB_PREFIX) else dovecot_dict.not_found()
        if command.name == "I":
            return dovecot_dict.iteration_finished()  # nothing to list
        if command.name in ("C", "D"):
            return dovecot_dict.commit_failed(command.args[0], "writes are not supported")
        if command.name in ("B", "S", "U", "A", "T", "R"):
            return b""  # parts of a transaction: no reply until its commit
        return dovecot_dict.failed(f"unsupported command {command.name}")

    async def respond(self, command: dovecot_dict.Command) -> bytes:
        reply = self.answer_now(command)  # queued behind a lookup, answered in order
        if reply is not None:
            return reply
        try:
            outcome = await self._userdb.lookup(command.args[0].removeprefix(USERDB_PREFIX))
        except Exception:
            log.exception("userdb lookup failed unexpectedly")
            return dovecot_dict.failed("internal error")
        if isinstance(outcome, DovecotUser):
            return dovecot_dict.found(json.dumps(self._userdb.attributes(outcome)))
        if isinstance(outcome, Failure):
            return dovecot_dict.failed(outcome.reason)
        return dovecot_dict.not_found()

    def busy(self, command: dovecot_dict.Command) -> bytes:
        return dovecot_dict.failed("server busy")
