"""Every Prometheus metric of the service, declared once, with fixed label sets.

Names and label values follow the Go userli-postfix-adapter so existing dashboards keep working.
Label values never come from client input: an unknown map is ``unknown``, and no address,
token or password ever becomes a label. Hot-path label children are bound once up front.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from adapter import __version__
from adapter.gc_pauses import GCPauses
from adapter.server import ListenerHooks

__all__ = ["CONTENT_TYPE_LATEST", "LOOKUP_STATUSES", "Metrics"]

PREFIX = "userli_postfix_adapter"
# Status codes userli and the proxies in front of it really answer, each a label of its own.
STATUS_LABELS = {
    code: str(code) for code in (200, 301, 302, 400, 401, 403, 404, 405, 415, 422, 429, 500, 502, 503, 504)
}
LOOKUP_STATUSES = ("success", "notfound", "error")
CACHE_RESULTS = ("hit", "miss", "stale", "error")
POLICY_STAGES = ("skip", "check")
POLICY_ACTIONS = ("dunno", "reject", "error")  # reject: over quota, whatever RATE_LIMIT_ACTION says
QUOTA_RESULTS = ("within", "exceeded", "unlimited", "unknown_user", "no_identity", "error")
LISTENERS = ("socketmap", "policy", "sasl", "tcp_table", "dovecot_dict")
SASL_MECHANISMS = ("PLAIN", "LOGIN", "other")
SASL_RESULTS = ("success", "invalid_credentials", "error")
NGINX_PROTOCOLS = ("smtp", "imap", "pop3")
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
        self._nginx_auth = _CountedDurations(
            registry,
            ("nginx_auth_total", "nginx_auth_duration_seconds"),
            "nginx mail logins checked (auth_http)",
            {"protocol": NGINX_PROTOCOLS, "result": SASL_RESULTS},
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
        self._cache = _Counts(
            registry,
            "lookup_cache_total",
            "Lookup cache results (error: Redis failed, the lookup went on without it)",
            {"handler": handlers, "result": CACHE_RESULTS},
        )
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
        self.gc_pauses = GCPauses(registry, PREFIX)
        self.health_check_status = Gauge(
            f"{PREFIX}_health_check_status", "Last readiness check (1 = ready, 0 = not)", registry=registry
        )

    def observe_request(self, handler: str, status: str, seconds: float) -> None:
        self._requests.observe((handler, status), seconds)

    def observe_http(self, endpoint: str, status: int | None, seconds: float) -> None:
        """``status`` None means no HTTP response at all (timeout, refused, reset)."""
        if status is None:
            label = "error"
        elif status in STATUS_LABELS:
            label = STATUS_LABELS[status]
        else:  # any other status in its class: a hostile userli cannot mint series
            label = f"{status // 100}xx" if 100 <= status <= 599 else "other"
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

    def observe_nginx_auth(self, protocol: str, result: str, seconds: float) -> None:
        self._nginx_auth.observe((protocol, result), seconds)

    def observe_cache(self, handler: str, result: str) -> None:
        self._cache.inc((handler, result))

    def observe_coalesced(self, handler: str) -> None:
        self._coalesced[handler].inc()

    def listener_hooks(self, listener: str) -> ListenerHooks:
        """What the listener core reports, wired to this listener's metrics."""
        return self._hooks[listener]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# The Go adapter's names: the socketmap listener's metrics have no prefix.
_LISTENER_PREFIX = {
    "socketmap": "",
    "policy": "policy_",
    "sasl": "sasl_",
    "tcp_table": "tcp_table_",
    "dovecot_dict": "dovecot_dict_",
}


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


_BUCKET_LABELS = (*map(floatToGoString, REQUEST_BUCKETS), "+Inf")  # the "le" of each bucket


class _CountedDurations:
    """A counter and a duration histogram over the same labels, kept as plain numbers per label
    combination and exported at scrape time.

    prometheus_client's children take a lock on every update, two or three per observation; here
    every update and every scrape run on the event loop's one thread, so the locks buy nothing and
    cost 2 of the 11 us a cache hit took (bench/README).
    The exposition is the same as the library's Counter and Histogram with these buckets.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        names: tuple[str, str],
        what: str,
        labels: dict[str, tuple[str, ...]],
    ) -> None:
        self._names = (f"{PREFIX}_{names[0]}", f"{PREFIX}_{names[1]}")
        self._help = (f"Total number of {what}", f"Duration of {what}")
        self._label_names = list(labels)
        # per label values: [count, sum of seconds, count per bucket (the last one is +Inf)]
        self._children = {
            values: [0, 0.0, [0] * (len(REQUEST_BUCKETS) + 1)] for values in itertools.product(*labels.values())
        }
        registry.register(self)

    def observe(self, values: tuple[str, ...], seconds: float) -> None:
        child = self._children[values]
        child[0] += 1
        child[1] += seconds
        child[2][bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1  # le: a value on a bound counts in it

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._names[0], self._help[0], labels=self._label_names)
        yield HistogramMetricFamily(self._names[1], self._help[1], labels=self._label_names)

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(self._names[0], self._help[0], labels=self._label_names)
        duration = HistogramMetricFamily(self._names[1], self._help[1], labels=self._label_names)
        for values, (count, seconds, buckets) in self._children.items():
            total.add_metric(values, count)
            cumulative = zip(_BUCKET_LABELS, itertools.accumulate(buckets), strict=True)
            duration.add_metric(values, list(cumulative), seconds)
        yield total
        yield duration


class _Counts:
    """Counters over a fixed set of label values, as plain numbers (see ``_CountedDurations``)."""

    def __init__(self, registry: CollectorRegistry, name: str, documentation: str, labels: dict[str, tuple[str, ...]]):
        self._name, self._help, self._label_names = f"{PREFIX}_{name}", documentation, list(labels)
        self._counts = dict.fromkeys(itertools.product(*labels.values()), 0)
        registry.register(self)

    def inc(self, values: tuple[str, ...]) -> None:
        self._counts[values] += 1

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._help, labels=self._label_names)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._help, labels=self._label_names)
        for values, count in self._counts.items():
            family.add_metric(values, count)
        yield family
