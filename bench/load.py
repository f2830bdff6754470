"""A closed-loop socketmap load generator: C connections, each sending its next request only after
the reply to the previous one, like Postfix processes. Records every latency."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Result:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    replies: int = 0  # every reply, warm-up included (to compare with the userli calls made)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")

    def summary(self) -> str:
        ms = [self.percentile(p) * 1000 for p in (50, 95, 99)] + [max(self.latencies, default=0) * 1000]
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.answers.items()))
        return (
            f"{self.rate:9.0f}/s  p50 {ms[0]:6.2f}  p95 {ms[1]:6.2f}  p99 {ms[2]:6.2f}  max {ms[3]:7.2f} ms  {counts}"
        )


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class _Client(asyncio.Protocol):
    def __init__(self, requests: itertools.cycle[bytes], result: Result, state: dict[str, bool]) -> None:
        self._requests, self._result, self._state = requests, result, state
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._send()

    def _send(self) -> None:
        self._sent = time.perf_counter()
        self._transport.write(next(self._requests))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        colon = self._buffer.find(b":")
        if colon < 0:
            return
        length = int(self._buffer[:colon])
        if len(self._buffer) < colon + length + 2:
            return
        reply = self._buffer[colon + 1 : colon + 1 + length]
        self._buffer = self._buffer[colon + length + 2 :]
        self._result.replies += 1
        if self._state["measuring"]:
            self._result.latencies.append(time.perf_counter() - self._sent)
            self._result.answers[reply.split(b" ", 1)[0].decode()] += 1
        if self._state["running"]:
            self._send()


async def run(address: str, requests: list[bytes], connections: int, seconds: float, warmup: float = 0.5) -> Result:
    loop = asyncio.get_running_loop()
    result = Result(seconds)
    state = {"running": True, "measuring": False}
    transports = []
    for i in range(connections):
        # Each connection walks the request list from its own offset, spread evenly: connections
        # one key apart would ask for the same cold key at nearly the same moment, and the
        # adapter's single flight would answer them with one userli call.
        offset = i * len(requests) // connections
        cycle = itertools.cycle(requests[offset:] + requests[:offset])
        factory = lambda c=cycle: _Client(c, result, state)  # noqa: E731
        if address.startswith("/"):
            transport, _ = await loop.create_unix_connection(factory, address)
        else:
            host, port = address.rsplit(":", 1)
            transport, _ = await loop.create_connection(factory, host, int(port))
        transports.append(transport)
    await asyncio.sleep(warmup)
    state["measuring"] = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    state["measuring"] = False
    result.seconds = time.perf_counter() - started
    state["running"] = False
    await asyncio.sleep(0.05)
    for transport in transports:
        transport.close()
    return result


def median_rate(results: list[Result]) -> float:
    return statistics.median(r.rate for r in results)
