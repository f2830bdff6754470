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
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import netstring, run
from standins import REPLY, ConstantReply, serve

REQUEST = netstring(b"mailbox user@example.org")


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
    if style == "protocol":
        serve(ConstantReply, f"127.0.0.1:{port}", 0, ready)
    else:
        os.sched_setaffinity(0, {0})
        uvloop.run(serve_streams(port, ready))


def measure(style: str, port: int, connections: int, seconds: float) -> float:
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=run_server, args=(style, port, ready), daemon=True)
    server.start()
    ready.wait(10)
    os.sched_setaffinity(0, {1})
    try:
        return uvloop.run(run(f"127.0.0.1:{port}", [REQUEST], connections, seconds)).rate
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
    for run_number in range(args.runs):  # interleaved, so drift on the machine hits both alike
        for style in results:
            port = args.port + run_number * 2 + (style == "streams")
            results[style].append(measure(style, port, args.connections, args.seconds))
    medians = {style: statistics.median(rates) for style, rates in results.items()}
    for style, rates in results.items():
        print(f"{style:9s} median {medians[style]:9.0f} lookups/s   runs: {', '.join(f'{r:.0f}' for r in rates)}")
    print(f"protocol / streams = {medians['protocol'] / medians['streams']:.2f}x at {args.connections} connections")


if __name__ == "__main__":
    main()
