"""The lock-free hot-path metrics must expose exactly what prometheus_client's own would."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

from adapter.lookups import MAP_NAMES
from adapter.metrics import PREFIX, REQUEST_BUCKETS, Metrics, _CountedDurations
from adapter.userli import ENDPOINTS

# Values on, just below and just above bucket bounds, zero, and past the last bound.
OBSERVATIONS = [0.0, 0.0005, 0.001, 0.0010001, 0.004, 0.2, REQUEST_BUCKETS[-1], REQUEST_BUCKETS[-1] + 1, 3.0]


def test_counted_durations_match_the_library_counter_and_histogram():
    disable_created_metrics()  # as Metrics does: the Go adapter exposes no *_created series
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = {"handler": ("alias", "mailbox"), "status": ("success", "error")}
    durations = _CountedDurations(ours, ("requests_total", "request_duration_seconds"), "socketmap requests", labels)
    total = Counter(f"{PREFIX}_requests_total", "Total number of socketmap requests", list(labels), registry=theirs)
    duration = Histogram(
        f"{PREFIX}_request_duration_seconds",
        "Duration of socketmap requests",
        list(labels),
        buckets=REQUEST_BUCKETS,
        registry=theirs,
    )
    for handler in labels["handler"]:
        for status in labels["status"]:
            total.labels(handler, status)
            duration.labels(handler, status)
    for i, seconds in enumerate(OBSERVATIONS):
        values = ("alias", "success") if i % 3 else ("mailbox", "error")
        durations.observe(values, seconds)
        total.labels(*values).inc()
        duration.labels(*values).observe(seconds)

    def lines(registry: CollectorRegistry) -> list[bytes]:
        return sorted(generate_latest(registry).splitlines())

    assert lines(ours) == lines(theirs)
    assert b'request_duration_seconds_bucket{handler="alias",le="0.001",status="success"}' in b"\n".join(lines(ours))


def test_cache_results_are_counted_per_handler_and_result():
    metrics = Metrics(("alias", "mailbox"), ("alias",))
    metrics.observe_cache("alias", "hit")
    metrics.observe_cache("alias", "hit")
    metrics.observe_cache("mailbox", "stale")
    sample = metrics.registry.get_sample_value
    assert sample(f"{PREFIX}_lookup_cache_total", {"handler": "alias", "result": "hit"}) == 2
    assert sample(f"{PREFIX}_lookup_cache_total", {"handler": "mailbox", "result": "stale"}) == 1
    assert sample(f"{PREFIX}_lookup_cache_total", {"handler": "mailbox", "result": "hit"}) == 0


def test_garbage_collector_pauses_are_measured() -> None:
    metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)
    metrics.gc_pauses.watch()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        metrics.gc_pauses.unwatch()
    gc.collect()  # not counted any more
    sample = metrics.registry.get_sample_value
    assert sample("userli_postfix_adapter_gc_pause_seconds_count", {"generation": "2"}) == 1
    assert sample("userli_postfix_adapter_gc_pause_seconds_count", {"generation": "0"}) >= 1
    longest = sample("userli_postfix_adapter_gc_pause_max_seconds", {"generation": "2"})
    assert 0 < longest <= sample("userli_postfix_adapter_gc_pause_seconds_sum", {"generation": "2"})
    assert sample("userli_postfix_adapter_gc_pause_seconds_bucket", {"generation": "2", "le": "+Inf"}) == 1
