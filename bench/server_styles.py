"""Which asyncio style should the listener core use? A constant-reply socketmap server written
with asyncio Protocols and one written with asyncio streams, both on uvloop, driven by the same
closed-loop load generator (each connection sends its next request only after the reply, like a
Postfix process). The server is pinned to CPU 0, the load generator to CPU 1.

    python bench/server_styles.py [--connections 50] [--seconds 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time

import uvloop

REQUEST = b"26:mailbox user@example.org,"
REPLY = b"4:OK 1,"


class ConstantProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b",")  # the request payload has no comma
        if count:
            self.buffer = self.buffer[self.buffer.rindex(b",") + 1 :]
            self.transport.write(REPLY * count)  # type: ignore[attr-defined]


async def serve_protocol(port: int, ready: multiprocessing.Event) -> None:
    server = await asyncio.get_running_loop().create_server(ConstantProtocol, "127.0.0.1", port)
    ready.set()
    await server.serve_forever()


async def serve_streams(port: int, ready: multiprocessing.Event) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b",")
                writer.write(REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    ready.set()
    await server.serve_forever()


def run_server(style: str, port: int, ready: multiprocessing.Event) -> None:
    os.sched_setaffinity(0, {0})
    uvloop.run((serve_protocol if style == "protocol" else serve_streams)(port, ready))


class LoadConnection(asyncio.Protocol):
    def __init__(self, stats: list[int]) -> None:
        self.stats = stats
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.pending += data
        if self.pending.endswith(REPLY):
            self.pending = b""
            self.stats[0] += 1
            self.transport.write(REQUEST)  # type: ignore[attr-defined]


async def load(port: int, connections: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    stats = [0]
    transports = [
        (await loop.create_connection(lambda: LoadConnection(stats), "127.0.0.1", port))[0] for _ in range(connections)
    ]
    await asyncio.sleep(0.5)  # warm-up
    start_count, started = stats[0], time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (stats[0] - start_count) / (time.perf_counter() - started)
    for transport in transports:
        transport.close()
    return rate


def measure(style: str, port: int, connections: int, seconds: float) -> float:
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=run_server, args=(style, port, ready), daemon=True)
    server.start()
    ready.wait(10)
    os.sched_setaffinity(0, {1})
    try:
        return uvloop.run(load(port, connections, seconds))
    finally:
        server.kill()
        server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18_001)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"protocol": [], "streams": []}
    for run in range(args.runs):  # interleaved, so drift on the machine hits both alike
        for style in results:
            results[style].append(
                measure(style, args.port + run * 2 + (style == "streams"), args.connections, args.seconds)
            )
    medians = {style: statistics.median(rates) for style, rates in results.items()}
    for style, rates in results.items():
        print(f"{style:9s} median {medians[style]:9.0f} lookups/s   runs: {', '.join(f'{r:.0f}' for r in rates)}")
    print(f"protocol / streams = {medians['protocol'] / medians['streams']:.2f}x at {args.connections} connections")


if __name__ == "__main__":
    main()
