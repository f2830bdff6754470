"""A userli call leaves no reference cycles behind: its garbage is freed by reference counting,
so the cyclic collector has little to walk (issue 15: full collections with a large cache).

Before: 24 objects in cycles per call (httpx's response and the stream wrapping it pointed at
each other), 16 per failed call (our transport's connection and its parser)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest
from helpers import RunningService, SocketmapClient, UserliStub, config_for


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("userli_state", ["answers", "500", "down", "slow"])
def test_userli_calls_leave_no_cyclic_garbage(userli: UserliStub, userli_state: str, collector_off: None) -> None:
    running = RunningService(
        config_for(userli.url, cache_ttl=0, stale_ttl=0, breaker_threshold=1_000_000, userli_timeout=0.05)
    )
    try:
        with SocketmapClient(running.socketmap_port) as client:
            for i in range(20):  # warm up: connections, code paths, first-time allocations
                client.query("mailbox", f"warm{i}@example.org")
            if userli_state == "500":
                userli.behaviour = lambda endpoint, key: (500, b'{"error":{"message":"boom"}}')
            elif userli_state == "down":
                userli.stop()  # kept-alive connections die under the next requests
                time.sleep(0.3)  # the stub's server thread lets go of its handler class (a cycle of its own)
            elif userli_state == "slow":
                userli.delay = 0.2  # every call times out: we close each connection
            gc.collect()
            for i in range(30 if userli_state == "slow" else 100):
                client.query("mailbox", f"cold{i}@example.org")
            assert gc.collect() == 0
    finally:
        running.stop()
