"""Every Prometheus metric of the service, declared once, with fixed label sets.

Names and label values follow the Go userli-postfix-adapter so existing dashboards keep working.
Label values never come from client input: an unknown map is ``unknown``, and no address,
token or password ever becomes a label. Hot-path label children are bound once up front.
"""

from __future__ import annotations

import itertools

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from adapter import __version__
from adapter.server import ListenerHooks

__all__ = ["CONTENT_TYPE_LATEST", "LOOKUP_STATUSES", "Metrics"]

PREFIX = "userli_postfix_adapter"
LOOKUP_STATUSES = ("success", "notfound", "error")
CACHE_RESULTS = ("hit", "miss", "stale", "error")
POLICY_STAGES = ("skip", "check")
POLICY_ACTIONS = ("dunno", "reject", "error")  # reject: over quota, whatever RATE_LIMIT_ACTION says
QUOTA_RESULTS = ("within", "exceeded", "unlimited", "unknown_user", "no_identity", "error")
LISTENERS = ("socketmap", "policy", "sasl")
SASL_MECHANISMS = ("PLAIN", "LOGIN", "other")
SASL_RESULTS = ("success", "invalid_credentials", "error")
# Go adapter buckets: ExponentialBuckets(0.001, 2, 10) and ExponentialBuckets(0.01, 2, 10).
REQUEST_BUCKETS = tuple(0.001 * 2**i for i in range(10))
HTTP_BUCKETS = tuple(0.01 * 2**i for i in range(10))


class Metrics:
    def __init__(self, handlers: tuple[str, ...], endpoints: tuple[str, ...]) -> None:
        disable_created_metrics()  # the Go adapter exposes no *_created series; neither do we
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Gauge(f"{PREFIX}_build_info", "Build information", ["version"], registry=registry).labels(__version__).set(1)

        self._requests = _CountedDurations(
            registry,
            ("requests_total", "request_duration_seconds"),
            "socketmap requests",
            {"handler": (*handlers, "unknown"), "status": LOOKUP_STATUSES},
        )
        self.connection_pool_usage = Gauge(
            f"{PREFIX}_connection_pool_usage", "Socketmap connections in use out of MAX_CONNECTIONS", registry=registry
        )
        protocol_errors = Counter(
            f"{PREFIX}_protocol_errors_total", "Connections closed for broken framing", ["listener"], registry=registry
        )
        self._hooks = {
            listener: _listener_hooks(
                registry,
                listener,
                protocol_errors.labels(listener),
                usage=self.connection_pool_usage if listener == "socketmap" else None,
            )
            for listener in LISTENERS
        }
        self._policy = _CountedDurations(
            registry,
            ("policy_requests_total", "policy_request_duration_seconds"),
            "policy requests",
            {"stage": POLICY_STAGES, "action": POLICY_ACTIONS},
        )
        self.quota_exceeded = Counter(
            f"{PREFIX}_quota_exceeded_total",
            "Total number of messages refused for exceeding the quota",
            registry=registry,
        )
        quota_checks = Counter(f"{PREFIX}_quota_checks_total", "Quota checks by result", ["result"], registry=registry)
        self._quota_checks = {result: quota_checks.labels(result) for result in QUOTA_RESULTS}
        ratelimit_errors = Counter(
            f"{PREFIX}_ratelimit_backend_errors_total",
            "Rate-limit store errors (the message was let through)",
            ["operation"],
            registry=registry,
        )
        self.ratelimit_errors = ratelimit_errors.labels("check")
        self._sasl = _CountedDurations(
            registry,
            ("sasl_auth_total", "sasl_auth_duration_seconds"),
            "SASL authentications",
            {"mechanism": SASL_MECHANISMS, "result": SASL_RESULTS},
        )
        self._http_duration = Histogram(
            f"{PREFIX}_http_client_duration_seconds",
            "Duration of HTTP requests to the userli API",
            ["endpoint", "status_code"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self._http_total = Counter(
            f"{PREFIX}_http_client_requests_total",
            "Total number of HTTP requests to the userli API",
            ["endpoint", "status_code"],
            registry=registry,
        )
        self._endpoints = frozenset(endpoints)
        self._http_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        lookup_cache = Counter(
            f"{PREFIX}_lookup_cache_total",
            "Lookup cache results (error: Redis failed, the lookup went on without it)",
            ["handler", "result"],
            registry=registry,
        )
        self._cache = {(h, r): lookup_cache.labels(h, r) for h in handlers for r in CACHE_RESULTS}
        coalesced = Counter(
            f"{PREFIX}_lookup_coalesced_total",
            "Lookups that joined a userli call already under way for the same key",
            ["handler"],
            registry=registry,
        )
        self._coalesced = {h: coalesced.labels(h) for h in handlers}
        self.cache_entries = Gauge(
            f"{PREFIX}_lookup_cache_entries", "Entries in the in-process cache", registry=registry
        )
        self.breaker_state = Gauge(
            f"{PREFIX}_userli_breaker_state",
            "Circuit breaker toward userli: 0 closed, 1 half-open (probing), 2 open",
            registry=registry,
        )
        self.health_check_status = Gauge(
            f"{PREFIX}_health_check_status", "Last readiness check (1 = ready, 0 = not)", registry=registry
        )

    def observe_request(self, handler: str, status: str, seconds: float) -> None:
        self._requests.observe((handler, status), seconds)

    def observe_http(self, endpoint: str, status: int | None, seconds: float) -> None:
        """``status`` None means no HTTP response at all (timeout, refused, reset)."""
        if status is None:
            label = "error"
        else:
            label = str(status) if 100 <= status <= 599 else "other"
        key = (endpoint if endpoint in self._endpoints else "unknown", label)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (self._http_total.labels(*key), self._http_duration.labels(*key))
        children[0].inc()
        children[1].observe(seconds)

    def observe_policy(self, stage: str, action: str, seconds: float) -> None:
        self._policy.observe((stage, action), seconds)

    def observe_sasl(self, mechanism: str, result: str, seconds: float) -> None:
        """``seconds`` excludes the failure delay: it measures the check, not the brake."""
        self._sasl.observe((mechanism if mechanism in SASL_MECHANISMS else "other", result), seconds)

    def observe_quota_check(self, result: str) -> None:
        self._quota_checks[result].inc()

    def observe_cache(self, handler: str, result: str) -> None:
        self._cache[(handler, result)].inc()

    def observe_coalesced(self, handler: str) -> None:
        self._coalesced[handler].inc()

    def listener_hooks(self, listener: str) -> ListenerHooks:
        """What the listener core reports, wired to this listener's metrics."""
        return self._hooks[listener]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# The Go adapter's names: the socketmap listener's metrics have no prefix.
_LISTENER_PREFIX = {"socketmap": "", "policy": "policy_", "sasl": "sasl_"}


def _listener_hooks(
    registry: CollectorRegistry, listener: str, framing_errors: Counter, usage: Gauge | None = None
) -> ListenerHooks:
    prefix = f"{PREFIX}_{_LISTENER_PREFIX[listener]}"
    active = Gauge(
        f"{prefix}active_connections", f"Number of currently active {listener} connections", registry=registry
    )
    pool_full = Counter(
        f"{prefix}connection_pool_full_total",
        f"{listener} connections over MAX_CONNECTIONS (answered busy, or closed at once)",
        registry=registry,
    )

    def connections_changed(count: int) -> None:
        active.set(count)
        if usage is not None:
            usage.set(count)

    return ListenerHooks(connections_changed, pool_full.inc, framing_errors.inc)


class _CountedDurations:
    """A counter and a duration histogram over the same labels, with a child pair bound up front
    for every combination of label values (no label lookup on the hot path)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        names: tuple[str, str],
        what: str,
        labels: dict[str, tuple[str, ...]],
    ) -> None:
        total = Counter(f"{PREFIX}_{names[0]}", f"Total number of {what}", list(labels), registry=registry)
        duration = Histogram(
            f"{PREFIX}_{names[1]}", f"Duration of {what}", list(labels), buckets=REQUEST_BUCKETS, registry=registry
        )
        self._children = {
            values: (total.labels(*values), duration.labels(*values)) for values in itertools.product(*labels.values())
        }

    def observe(self, values: tuple[str, ...], seconds: float) -> None:
        counter, histogram = self._children[values]
        counter.inc()
        histogram.observe(seconds)
