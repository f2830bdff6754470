"""How long the garbage collector stops the event loop: every connection waits out a pause.

Measured with ``gc.callbacks`` and exported as a histogram per generation plus the longest pause
since start, so an operator (and bench/run.py) can see whether the cache size makes collections
long: the lookup cache keeps nothing the collector walks (lookup_cache.py), so they should not.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["GCPauses"]

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BUCKET_LABELS = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
GENERATIONS = ("0", "1", "2")


class GCPauses:
    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self._names = (f"{prefix}_gc_pause_seconds", f"{prefix}_gc_pause_max_seconds")
        # per generation: [count, sum of seconds, count per bucket (the last one is +Inf), longest]
        self._pauses = {g: [0, 0.0, [0] * (len(BUCKETS) + 1), 0.0] for g in range(len(GENERATIONS))}
        self._started = 0.0
        registry.register(self)

    def watch(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def unwatch(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        pauses = self._pauses[info["generation"]]
        pauses[0] += 1
        pauses[1] += seconds
        pauses[2][bisect.bisect_left(BUCKETS, seconds)] += 1
        pauses[3] = max(pauses[3], seconds)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._names[0], "Garbage-collector pauses", labels=["generation"])
        yield GaugeMetricFamily(self._names[1], "Longest garbage-collector pause since start", labels=["generation"])

    def collect(self) -> Iterator[Metric]:
        histogram = HistogramMetricFamily(self._names[0], "Garbage-collector pauses", labels=["generation"])
        longest = GaugeMetricFamily(
            self._names[1], "Longest garbage-collector pause since start", labels=["generation"]
        )
        for generation, (_, seconds, buckets, most) in self._pauses.items():
            cumulative = zip(_BUCKET_LABELS, itertools.accumulate(buckets), strict=True)
            histogram.add_metric([GENERATIONS[generation]], list(cumulative), seconds)
            longest.add_metric([GENERATIONS[generation]], most)
        yield histogram
        yield longest
