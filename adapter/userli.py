"""The one client of the userli API. It turns every HTTP outcome into an ``Outcome``:

* ``Found``: userli answered 200 with a non-empty list or ``true``;
* ``NotFound``: userli answered 200 with ``[]`` or ``false`` -- the only "no" there is;
* ``Failure``: anything else (timeout, refused, non-200, non-JSON, wrong JSON type).

Handlers never look at HTTP. A failure is never a "no": it becomes TEMP for Postfix.

userli has two kinds of error body (``../shared/reference/userli-api.md``): its controllers'
own ``{"message": ...}`` answers about a user, and ``{"error": ...}`` from everything in front of
them -- a token userli does not know (401), a token without the ``postfix`` scope (403), a route
that does not exist (404). Only the former is ever an answer; the latter is a configuration
problem of this adapter, reported as such and never turned into "wrong password" or "no such
user". Every call's outcome goes to a ``FailureLog`` per route family, which logs outages once,
new reasons when they appear, and recoveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import httpx

from adapter import __version__
from adapter.config import Config
from adapter.failure_log import FailureLog
from adapter.keys import map_keys
from adapter.metrics import Metrics
from adapter.tls import client_context, describe_tls_error
from adapter.transport import UserliTransport

__all__ = [
    "BOOL_MAPS",
    "ENDPOINTS",
    "LIST_MAPS",
    "MAPS",
    "Authenticated",
    "Failure",
    "Found",
    "NotFound",
    "Outcome",
    "Quota",
    "Refused",
    "UserliClient",
]

log = logging.getLogger("adapter.userli")

LIST_MAPS = ("alias", "senders")  # 200 body: JSON list of addresses
BOOL_MAPS = ("domain", "mailbox")  # 200 body: JSON true / false
MAPS = (*LIST_MAPS, *BOOL_MAPS)  # the socketmap names
ENDPOINTS = (*MAPS, "smtp_quota", "auth", "dovecot")  # every endpoint label of the HTTP metrics
READY_PROBE_DOMAIN = "health-check.invalid"
# userli requests in flight at once; the rest wait their turn in arrival order: a PHP userli
# gains nothing from hundreds of parallel requests, and the adapter's CPU is better spent
# answering what it can than juggling calls that wait.
MAX_IN_FLIGHT = 32  # a cheap lookup that userli can answer from its cache
# Idle keep-alive connections: more than the calls in flight, because a used connection rests
# 20 ms before reuse (transport.py); with 32, a busy adapter churned connections (bench/README).
MAX_IDLE = 128
QUOTA_UNKNOWN_USER = "User not found"  # the smtp_quota route's own 404 body: {"error": "User not found"}


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
    hint: str = ""  # for the operator's log: what to check


@dataclass(frozen=True, slots=True)
class DovecotUser:
    """userli's userdb answer (``GET /api/dovecot/{email}``)."""

    user: str
    quota: str  # e.g. "1024M"; "" for none
    mailcrypt_public_key: str  # "" unless MailCrypt is on for the user


@dataclass(frozen=True, slots=True)
class Quota:
    per_hour: int  # 0: unlimited
    per_day: int  # 0: unlimited

    @property
    def unlimited(self) -> bool:
        return self.per_hour == 0 and self.per_day == 0


@dataclass(frozen=True, slots=True)
class Authenticated:
    pass


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # userli's own words, e.g. "authentication failed", "user disabled due to spam role"


_T = TypeVar("_T")
_READ = httpx.ByteStream(b"")  # in place of a response's stream once its body is read
_INVALID = object()
AUTHENTICATED = Authenticated()
Outcome = Found | NotFound | Failure
NOT_FOUND = NotFound()
TRUE = Found(("1",))


def transport(config: Config) -> httpx.AsyncBaseTransport:
    """The HTTP transport under the client (unit tests swap in httpx's own for pytest-httpx)."""
    tls = client_context(config.userli_tls) if config.userli_tls.custom else None
    return UserliTransport(max_idle=MAX_IDLE, keepalive_expiry=config.userli_keepalive, ssl_context=tls)


class UserliClient:
    def __init__(self, http: httpx.AsyncClient, metrics: Metrics, timeout: float, delimiters: str = "") -> None:
        self._http = http
        self._delimiters = delimiters
        self._base_url = str(http.base_url).rstrip("/")
        self._timeouts = http.timeout.as_dict()
        self._metrics = metrics
        self._timeout = timeout
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.lookup_health = FailureLog(log, "userli")
        self.quota_health = FailureLog(log, "userli's smtp_quota route")
        self.auth_health = FailureLog(log, "userli's auth route")
        self.dovecot_health = FailureLog(log, "userli's dovecot route")

    @property
    def config_error(self) -> str | None:
        """What userli last said about our configuration (token, scope, route) on a route the
        readiness probe does not cover, while it lasts."""
        return self.auth_health.config_error or self.quota_health.config_error

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics) -> UserliClient:
        http = httpx.AsyncClient(
            base_url=config.userli_base_url,
            headers={
                "Authorization": f"Bearer {config.userli_token}",
                "Accept": "application/json",
                "User-Agent": f"userli-postfix-adapter/{__version__}",
                # No content coding: a compressed answer could decode to gigabytes (the
                # transport refuses any other), and userli's answers are small.
                "Accept-Encoding": "identity",
            },
            timeout=httpx.Timeout(config.userli_timeout),
            transport=transport(config),
            follow_redirects=False,
            trust_env=False,  # the userli URL is configured explicitly; no proxy from the environment
        )
        return cls(http, metrics, config.userli_timeout, config.recipient_delimiter)

    def _request(self, path: str, body: dict[str, str] | None, timeout: float | None) -> httpx.Request:
        """What ``AsyncClient.get``/``post`` would build, built directly: the client's merging of
        URL, headers and cookies cost a fifth of a userli call's CPU (bench/README). A call with a
        deadline of its own (a login: SASL_TIMEOUT) gets HTTP timeouts of that length too, so
        each setting bounds what it names."""
        timeouts = self._timeouts if timeout is None else httpx.Timeout(timeout).as_dict()
        return httpx.Request(
            "GET" if body is None else "POST",
            self._base_url + path,
            headers=self._http.headers,
            json=body,
            extensions={"timeout": timeouts},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def keys(self, map_name: str, raw_key: str) -> tuple[str, ...]:
        """The canonical keys to ask for a request's key, in order (keys.py)."""
        return map_keys(map_name, raw_key, self._delimiters)

    def lookup_now(self, map_name: str, key: str) -> Outcome | None:
        return None  # the client itself never knows an answer without asking userli

    def reply_now(self, request: bytes) -> None:
        return None  # nor a reply

    async def lookup(self, map_name: str, key: str, timeout: float | None = None) -> Outcome:
        """``GET /api/postfix/{map_name}/{key}``; ``key`` must already be canonical."""
        return self._lookup_outcome(map_name, await self._get(map_name, key, timeout))

    def _lookup_outcome(self, map_name: str, response: httpx.Response | Failure) -> Outcome:
        if isinstance(response, Failure):
            outcome: Outcome = response
        elif response.status_code != 200:
            outcome = _error_status(response)
        else:
            outcome = _decode(map_name, response.content)
        return _noted(self.lookup_health, outcome)

    async def quota(self, email: str) -> Quota | NotFound | Failure:
        """``GET /api/postfix/smtp_quota/{email}``: per-user sending limits. Only userli's own
        404 ``{"error":"User not found"}`` means no such user; any other 404 means the route is
        missing (userli older than 6.2.0, a wrong path prefix)."""
        return _noted(self.quota_health, await self._quota(email))

    async def _quota(self, email: str) -> Quota | NotFound | Failure:
        response = await self._get("smtp_quota", email)
        if isinstance(response, Failure):
            return response
        if response.status_code == 404:
            if _json(response.content) == {"error": QUOTA_UNKNOWN_USER}:  # not a routing error
                return NOT_FOUND
            return Failure("userli has no smtp_quota route", transient=False, hint=ROUTE_HINTS["smtp_quota"])
        if response.status_code != 200:
            return _error_status(response)
        data = _json(response.content)
        if data is _INVALID:
            return Failure("userli sent invalid JSON")
        limits = [data.get(name) if isinstance(data, dict) else None for name in ("per_hour", "per_day")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in limits):
            return Failure("userli sent unexpected data")
        return Quota(per_hour=limits[0], per_day=limits[1])

    async def ready(self, timeout: float) -> Outcome:
        """A cheap lookup, outside the call slots: readiness probes never queue behind mail."""
        return self._lookup_outcome("domain", await self._get("domain", READY_PROBE_DOMAIN, timeout, use_slot=False))

    async def authenticate(self, email: str, password: str, timeout: float) -> Authenticated | Refused | Failure:
        """``POST /api/postfix/auth``. Fail-closed: only a 200 saying "success" is a success, and
        only userli's own ``{"message": ...}`` 401/403 answers are a refusal; a 401/403 with an
        ``error`` body is our token's problem, not the user's password."""
        return _noted(self.auth_health, await self._authenticate(email, password, timeout))

    async def _authenticate(self, email: str, password: str, timeout: float) -> Authenticated | Refused | Failure:
        response = await self._send("auth", "/api/postfix/auth", timeout, {"email": email, "password": password})
        if isinstance(response, Failure):
            return response
        status = response.status_code
        body = _json(response.content)
        message = body.get("message") if isinstance(body, dict) and "error" not in body else None
        if status == 200:
            return AUTHENTICATED if message == "success" else Failure("userli sent unexpected data")
        if status in (401, 403) and isinstance(message, str):  # wrong password or unknown user; disabled user
            return Refused(message[:200] if message.isprintable() and message else "authentication failed")
        if status == 404:
            return Failure("userli has no auth route", transient=False, hint=ROUTE_HINTS["auth"])
        return _error_status(response)

    async def dovecot_user(self, email: str, timeout: float | None = None) -> DovecotUser | NotFound | Failure:
        """``GET /api/dovecot/{email}`` (token scope ``dovecot``): the userdb. Only userli's own
        404 ``{"message": "user not found"}`` means no such user; ``email`` must be canonical."""
        return _noted(self.dovecot_health, await self._dovecot_user(email, timeout))

    async def _dovecot_user(self, email: str, timeout: float | None) -> DovecotUser | NotFound | Failure:
        response = await self._send("dovecot", f"/api/dovecot/{quote(email, safe='@')}", timeout)
        if isinstance(response, Failure):
            return response
        body = _json(response.content)
        if response.status_code == 404 and body == {"message": "user not found"}:
            return NOT_FOUND
        if response.status_code != 200:
            return _error_status(response, scope="dovecot")
        data = body.get("body") if isinstance(body, dict) else None
        fields = [
            data.get(name) if isinstance(data, dict) else None for name in ("user", "quota", "mailCryptPublicKey")
        ]
        mailcrypt = data.get("mailCrypt") if isinstance(data, dict) else None
        if not all(isinstance(field, str) for field in fields) or mailcrypt not in (0, 1, 2):
            return Failure("userli sent unexpected data")
        user, quota, public_key = fields
        return DovecotUser(user, quota, public_key if mailcrypt == 2 else "")  # type: ignore[arg-type]

    async def _get(
        self, endpoint: str, key: str, timeout: float | None = None, use_slot: bool = True
    ) -> httpx.Response | Failure:
        # The key is one path segment: '/', '?', '#', '%' and non-ASCII are percent-encoded, and
        # keys.py never lets '.' or '..' through, so no key can reach another path.
        path = f"/api/postfix/{endpoint}/{quote(key, safe='@')}"
        return await self._send(endpoint, path, timeout, use_slot=use_slot)

    async def _send(
        self,
        endpoint: str,
        path: str,
        timeout: float | None,
        body: dict[str, str] | None = None,
        use_slot: bool = True,
    ) -> httpx.Response | Failure:
        """One request, timed and counted; transport problems become a Failure. GET, or POST a JSON body."""
        started = time.perf_counter()
        status: int | None = None
        slot = self._in_flight if use_slot else contextlib.nullcontext()
        try:
            async with asyncio.timeout(timeout or self._timeout), slot:
                response = await self._http.send(self._request(path, body, timeout))
            # The body is read. httpx's client wraps the stream in one that points back at the
            # response, a reference cycle only the cyclic collector frees (24 objects a call):
            # without it, a response is freed the moment it is no longer used (issue 15).
            response.stream = _READ
            status = response.status_code
            return response
        except (TimeoutError, httpx.TimeoutException):
            return _transport_failure(endpoint, "userli timeout")
        except httpx.HTTPError as exc:
            tls_problem = describe_tls_error(exc.__cause__) if exc.__cause__ is not None else None
            if tls_problem is not None:  # worth naming: a certificate, a hostname, a protocol
                return _transport_failure(endpoint, "userli TLS failure", tls_problem, hint=tls_problem)
            return _transport_failure(endpoint, "userli unreachable", exc.__class__.__name__)
        finally:
            self._metrics.observe_http(endpoint, status, time.perf_counter() - started)


def _transport_failure(endpoint: str, reason: str, error: str = "", hint: str = "") -> Failure:
    log.debug("userli request failed", extra={"endpoint": endpoint, "reason": reason, "error": error or reason})
    return Failure(reason, hint=hint)


TOKEN_HINT = "check USERLI_TOKEN (or USERLI_TOKEN_FILE): userli does not know this token"
SCOPE_HINT = "give the token the {scope} scope: bin/console app:api-token:create --scopes postfix,dovecot"
ROUTE_HINTS = {
    "lookup": "check USERLI_BASE_URL: userli has no such route there",
    "smtp_quota": "sending quotas need userli 6.2.0 or newer (and a correct USERLI_BASE_URL); "
    "until then messages are not rate-limited",
    "auth": "SMTP AUTH needs userli 6.9.0 or newer (and a correct USERLI_BASE_URL)",
}


def _noted(health: FailureLog, outcome: _T) -> _T:
    if isinstance(outcome, Failure):
        health.failed(outcome.reason, config_error=not outcome.transient, hint=outcome.hint)
    else:
        health.answered()
    return outcome


def _error_status(response: httpx.Response, scope: str = "postfix") -> Failure:
    """A non-200 status that is not an answer: a token or scope problem, a missing route, an outage."""
    status = response.status_code
    if status == 401:
        return Failure("userli rejected the API token", transient=False, hint=TOKEN_HINT)
    if status == 403:
        if "scope" in str(_json(response.content)).lower():
            hint = SCOPE_HINT.format(scope=scope)
            return Failure(f"userli API token lacks the {scope} scope", transient=False, hint=hint)
        return Failure("userli refused the API token (403)", transient=False, hint=SCOPE_HINT.format(scope=scope))
    if status == 404:
        return Failure("userli has no such route", transient=False, hint=ROUTE_HINTS["lookup"])
    log.debug("userli answered an error status", extra={"status": status})
    return Failure(f"userli status {status}", transient=status >= 500)


def _json(content: bytes) -> object:
    """The decoded body, or ``_INVALID``."""
    try:
        return json.loads(content)
    except ValueError:
        return _INVALID


def _decode(map_name: str, body: bytes) -> Outcome:
    data = _json(body)
    if data is _INVALID:
        return Failure("userli sent invalid JSON")
    if map_name in BOOL_MAPS:
        if data is True:
            return TRUE
        if data is False:
            return NOT_FOUND
    elif isinstance(data, list) and all(isinstance(item, str) and item for item in data):
        return Found(tuple(data)) if data else NOT_FOUND
    return Failure("userli sent unexpected data")
