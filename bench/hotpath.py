"""The hot path in process: what one cache hit costs with 1,000, 100,000 and 1,000,000 cached keys
(issue 15), and what the cache costs in memory and in garbage-collector pauses.

Every key is cached (fresh) before the timing; the requests are looked up in random order, one
payload per key, through ``Lookups.answer_now`` exactly as the socketmap session calls it, each
request a new bytes object cut from one stream as the netstring decoder cuts it from a read (a
list of a million request objects read in random order would time memory the adapter never
reads, and their cached hashes would hide a cost it pays). Prints,
per size: microseconds per hit (median of 5 passes), bytes per cached key (tracemalloc, the
lookup cache and whatever the hot path keeps beside it) and the longest full (generation 2)
collection after start-up's objects are frozen, as the adapter does.

    python bench/hotpath.py [SIZES...]
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from adapter.config import Config
from adapter.lookups import Lookups
from adapter.metrics import Metrics
from adapter.resilience import ResilientUserli
from adapter.userli import ENDPOINTS, MAPS, Found, NotFound, Outcome

NOT_FOUND = NotFound()


class Userli:
    """Answers from a dict, no I/O: the cache is filled through the real ResilientUserli path."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Outcome] = {}

    async def lookup(self, map_name: str, key: str, timeout: float | None = None) -> Outcome:
        return self.answers.get((map_name, key), NOT_FOUND)

    def lookup_now(self, map_name: str, key: str) -> None:
        return None


def requests(size: int) -> list[bytes]:
    """A Postfix-like mix: alias and mailbox for every recipient, bare domains, senders."""
    payloads = []
    for i in range(size):
        kind = i % 10
        address = f"user{i:07d}@domain{i % 50:02d}.example.org"
        if kind < 4:
            payloads.append(f"alias {address}".encode())
        elif kind < 8:
            payloads.append(f"mailbox {address}".encode())
        elif kind == 8:
            payloads.append(f"senders {address}".encode())
        else:
            payloads.append(f"alias domain{i:07d}.example.net".encode())
    return payloads


async def measure(size: int) -> tuple[float, float, float]:
    config = replace(Config(userli_token="x"), cache_size=max(size, 1), cache_ttl=3600, negative_ttl=3600)
    metrics = Metrics(handlers=MAPS, endpoints=ENDPOINTS)
    userli = Userli()
    payloads = requests(size)
    for i, payload in enumerate(payloads):
        name, key = payload.decode().split(" ", 1)
        if i % 3:
            userli.answers[(name, key)] = (
                Found((f"dest{i}@example.org",)) if name in ("alias", "senders") else Found(("1",))
            )
    # The requests in random order, as one stream that each request is cut from, as the netstring
    # decoder does: a new bytes object per request, read from memory that is already at hand.
    order = payloads[:]
    random.Random(1).shuffle(order)
    stream = b"".join(order)
    ends = list(itertools.accumulate(map(len, order)))
    bounds = list(zip([0, *ends[:-1]], ends, strict=True))
    del order
    gc.collect()
    gc.freeze()  # as the adapter does after start-up: what is collected is what came later
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    resilient = ResilientUserli.from_config(config, userli, metrics)  # type: ignore[arg-type]
    if "size" in inspect.signature(Lookups).parameters:  # an older commit, for a side-by-side run
        lookups = Lookups(resilient, metrics, size=config.cache_size)  # type: ignore[call-arg]
    else:
        lookups = Lookups(resilient, metrics)
    for payload in payloads:
        await lookups.answer(payload)  # fills the cache (and whatever the hot path remembers)
    for payload in payloads:
        assert lookups.answer_now(payload) is not None
    per_key = (tracemalloc.get_traced_memory()[0] - before) / size
    tracemalloc.stop()
    passes = []
    for _ in range(5):
        started = time.perf_counter()
        for start, end in bounds:
            lookups.answer_now(stream[start:end])
        passes.append((time.perf_counter() - started) / len(bounds) * 1e6)
    pauses: list[float] = []
    started_at = [0.0]

    def timer(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started_at[0] = time.perf_counter()
            else:
                pauses.append((time.perf_counter() - started_at[0]) * 1000)

    gc.callbacks.append(timer)
    for _ in range(3):
        gc.collect()
    gc.callbacks.remove(timer)
    gc.unfreeze()
    return statistics.median(passes), per_key, max(pauses)


def main() -> None:
    sizes = [int(s) for s in sys.argv[1:]] or [1_000, 100_000, 1_000_000]
    for size in sizes:
        per_hit, per_key, pause = asyncio.run(measure(size))
        print(
            f"{size:>9,} cached keys: {per_hit:5.2f} us per hit, {per_key:5.0f} bytes per key, full GC {pause:6.1f} ms"
        )


if __name__ == "__main__":
    main()
