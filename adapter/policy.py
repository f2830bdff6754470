"""The SMTP access policy server: per-user sending quotas from userli.

Only ``protocol_state=END-OF-MESSAGE`` is checked (the message is complete and its recipients
are known); every other state answers DUNNO at once. Fail-open: when userli or the rate-limit
store cannot be asked, the answer is DUNNO and mail flows; the error is counted and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from adapter.cache import Entry, MemoryCache
from adapter.config import Config
from adapter.keys import lookup_keys
from adapter.metrics import Metrics
from adapter.protocols.policy import PolicyDecoder, reply
from adapter.ratelimit import RateLimiter, RateLimitError
from adapter.userli import NotFound, Quota, UserliClient

__all__ = ["PolicyDecider", "PolicySession", "identity_candidates"]

log = logging.getLogger("adapter.policy")

DUNNO = "DUNNO"
DUNNO_REPLY = reply(DUNNO)


def identity_candidates(
    attributes: Mapping[str, str], delimiters: str, authenticated_only: bool = False
) -> tuple[str, ...]:
    """Whose quota a message may count against, in the order to ask userli: the SASL login, else
    (unless only authenticated senders are counted) the envelope sender.

    Canonical like a lookup key, with Postfix's extension semantics: the full address first,
    then the address without its extension. The first one userli knows is the identity, so with
    a delimiter of ``-`` the user ``john-doe@`` counts as itself, not as ``john@``, while
    ``user+1@x`` and ``user+2@x`` (with ``+``) share the quota of ``user@x``.
    """
    raw = attributes.get("sasl_username") or ("" if authenticated_only else attributes.get("sender", ""))
    return tuple(key for key in lookup_keys(raw, delimiters) if "@" in key)


class PolicyDecider:
    def __init__(
        self,
        userli: UserliClient,
        limiter: RateLimiter,
        metrics: Metrics,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._userli = userli
        self._limiter = limiter
        self._metrics = metrics
        self._delimiters = config.recipient_delimiter
        self._authenticated_only = config.rate_limit_senders == "authenticated"
        self._count_recipients = config.rate_limit_count == "recipients"
        self._over_quota = f"{config.rate_limit_action} {config.rate_limit_message}"
        self._quota_ttl = config.quota_cache_ttl
        self._quotas: MemoryCache[Quota | NotFound] = MemoryCache(config.cache_size)
        self._clock = clock

    async def decide(self, attributes: Mapping[str, str]) -> str:
        started = time.perf_counter()
        if attributes.get("protocol_state", "").upper() != "END-OF-MESSAGE":
            self._metrics.observe_policy("skip", "dunno", time.perf_counter() - started)
            return DUNNO
        action, label = await self._check(attributes)
        self._metrics.observe_policy("check", label, time.perf_counter() - started)
        return action

    async def _check(self, attributes: Mapping[str, str]) -> tuple[str, str]:
        candidates = identity_candidates(attributes, self._delimiters, self._authenticated_only)
        if not candidates:
            self._metrics.observe_quota_check("no_identity")
            return DUNNO, "dunno"
        queue_id = attributes.get("queue_id", "")
        for identity in candidates:
            quota = await self._quota(identity, queue_id)
            if not isinstance(quota, NotFound):
                break
        if quota is None:
            return DUNNO, "error"
        if isinstance(quota, NotFound):
            self._metrics.observe_quota_check("unknown_user")
            return DUNNO, "dunno"
        if quota.unlimited:
            self._metrics.observe_quota_check("unlimited")
            return DUNNO, "dunno"
        try:
            decision = await self._limiter.check(identity, quota, self._weight(attributes))
        except RateLimitError as exc:
            self._metrics.ratelimit_errors.inc()
            self._metrics.observe_quota_check("error")
            log.warning(
                "rate-limit store failed; letting the message through", extra={"error": str(exc), "queue_id": queue_id}
            )
            return DUNNO, "error"
        if decision.allowed:
            self._metrics.observe_quota_check("within")
            return DUNNO, "dunno"
        self._metrics.observe_quota_check("exceeded")
        self._metrics.quota_exceeded.inc()
        log.info(
            "sending quota exceeded",
            extra={
                "identity": identity,
                "queue_id": queue_id,
                "last_hour": decision.last_hour,
                "last_day": decision.last_day,
                "per_hour": quota.per_hour,
                "per_day": quota.per_day,
            },
        )
        return self._over_quota, "reject"

    async def _quota(self, identity: str, queue_id: str) -> Quota | NotFound | None:
        """The user's quota, cached for QUOTA_CACHE_TTL; None when userli could not say (logged by
        the userli client once per outage, as an error when the route is missing)."""
        now = self._clock()
        cached = self._quotas.get(identity, now)
        if cached is not None and now < cached.fresh_until:
            return cached.answer
        outcome = await self._userli.quota(identity)
        if isinstance(outcome, Quota | NotFound):
            if self._quota_ttl > 0:
                self._quotas.put(identity, Entry(outcome, now + self._quota_ttl, now))
            return outcome
        self._metrics.observe_quota_check("error")
        log.debug(
            "quota lookup failed; letting the message through", extra={"reason": outcome.reason, "queue_id": queue_id}
        )
        return None

    def _weight(self, attributes: Mapping[str, str]) -> int:
        if not self._count_recipients:
            return 1
        count = attributes.get("recipient_count", "")
        return max(1, int(count)) if count.isdigit() else 1


class PolicySession:
    """One policy client connection: requests in, ``action=...`` replies out."""

    greeting = b""
    close_when_busy = False

    def __init__(self, decider: PolicyDecider) -> None:
        self._decider = decider
        self._decoder = PolicyDecoder()

    @property
    def pending(self) -> bool:
        return self._decoder.pending

    def receive(self, data: bytes) -> list[dict[str, str]]:
        return self._decoder.feed(data)  # PolicyError: the server core closes the connection

    async def respond(self, request: dict[str, str]) -> bytes:
        try:
            return reply(await self._decider.decide(request))
        except Exception:
            log.exception("policy check failed unexpectedly; letting the message through")
            return DUNNO_REPLY

    def answer_now(self, request: object) -> None:
        return None  # every answer here may need userli or a store: always the ordered worker

    def busy(self, request: dict[str, str]) -> bytes:
        return DUNNO_REPLY  # fail-open: a full pool must not stop mail
