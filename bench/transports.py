"""The adapter's userli transport vs httpx's default one and (when installed) httpx-aiohttp, same
client API, against the bench's userli stand-in: requests/s at 1, 10, 32 and 200 requests in
flight (median of 3 interleaved runs).

    pip install httpx-aiohttp   # optional; not a dependency of the adapter
    python bench/transports.py [shipped no-rest rest20-idle32 no-keepalive no-keepalive-no-settle httpx httpx-aiohttp]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standins import UserliStandIn, serve, user_address

from adapter.transport import UserliTransport

USERS = 20_000
OPENED: list[float] = []  # connections opened per request, per run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_standin(address: str, ready: object) -> None:
    serve(UserliStandIn, address, 1, ready)


async def rate(make_client: Callable[[], httpx.AsyncClient], in_flight: int, seconds: float = 2.0) -> float:
    client = make_client()
    keys = [user_address(i) for i in range(USERS)]
    done, running = 0, True

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while running:
            response = await client.get(f"/api/postfix/mailbox/{keys[index % USERS]}")
            assert response.status_code == 200
            index += in_flight
            done += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(in_flight)]
    await asyncio.sleep(0.3)
    before, started = done, time.perf_counter()
    await asyncio.sleep(seconds)
    result = (done - before) / (time.perf_counter() - started)
    running = False
    await asyncio.gather(*tasks, return_exceptions=True)
    transport = client._transport  # the adapter's transport counts its connections
    OPENED.append(getattr(transport, "opened", 0) / max(done, 1))
    await client.aclose()
    return result


def main() -> None:
    ready = multiprocessing.Event()
    address = f"127.0.0.1:{free_port()}"
    standin = multiprocessing.Process(target=run_standin, args=(address, ready), daemon=True)
    standin.start()
    ready.wait(30)
    os.sched_setaffinity(0, {0})
    base, limits = f"http://{address}", httpx.Limits(max_connections=32, max_keepalive_connections=32)

    def adapter(**options: float) -> Callable[[], httpx.AsyncClient]:
        options.setdefault("max_idle", 32)
        return lambda: httpx.AsyncClient(base_url=base, transport=UserliTransport(**options), trust_env=False)

    variants = sys.argv[1:] or ["shipped", "no-rest", "no-keepalive", "httpx", "httpx-aiohttp"]
    known: dict[str, Callable[[], httpx.AsyncClient]] = {
        # as the adapter builds it (userli.py): 128 idle, used connections rest 20 ms, new ones settle 2 ms
        "shipped": adapter(max_idle=128),
        "no-rest": adapter(max_idle=128, rest=0, settle=0),  # before issue 13
        "rest20-idle32": adapter(max_idle=32),
        "no-keepalive": adapter(keepalive_expiry=0),  # USERLI_KEEPALIVE=0
        "no-keepalive-no-settle": adapter(keepalive_expiry=0, settle=0),
        "httpx": lambda: httpx.AsyncClient(base_url=base, limits=limits, trust_env=False),
    }
    clients = {name: known[name] for name in variants if name in known}
    try:
        import httpx_aiohttp

        if "httpx-aiohttp" in variants:
            clients["httpx-aiohttp"] = lambda: httpx_aiohttp.HttpxAiohttpClient(
                base_url=base, limits=limits, trust_env=False
            )
    except ImportError:
        print("httpx-aiohttp is not installed: left out", flush=True)
    try:
        for in_flight in (1, 10, 32, 200):
            rates: dict[str, list[float]] = {name: [] for name in clients}
            opened: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(3):  # interleaved
                for name, make in clients.items():
                    rates[name].append(uvloop.run(rate(make, in_flight)))
                    opened[name].append(OPENED.pop())
            cells = "  ".join(
                f"{name}: {statistics.median(r):6.0f}/s ({statistics.median(opened[name]):.3f} conn/req)"
                for name, r in rates.items()
            )
            print(f"in flight {in_flight:3d}: {cells}", flush=True)
    finally:
        standin.kill()


if __name__ == "__main__":
    main()
