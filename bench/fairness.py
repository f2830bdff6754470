"""Fairness between socketmap clients: how long a well-behaved client's cached lookup waits while
20 clients pipeline requests that are answered locally and never read a reply (issue 13).

The adapter runs in this process, pinned to CPU 0; the flooding clients are processes pinned to
CPU 1, so the wait measured is the server's, not the load generator's. Prints the median, 90th
percentile and maximum of 40 lookups, 100 ms apart.

    python bench/fairness.py [FLOODERS]
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import RunningService, SocketmapClient, UserliStub, config_for, pipeline_without_reading

FLOOD_SECONDS = 12.0


def main() -> None:
    flooders = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    os.sched_setaffinity(0, {0})
    stub = UserliStub().start()
    running = RunningService(config_for(stub.url))
    port = running.socketmap_port
    processes = [
        multiprocessing.Process(target=pipeline_without_reading, args=(port, FLOOD_SECONDS, 1), daemon=True)
        for _ in range(flooders)
    ]
    try:
        with SocketmapClient(port, timeout=60) as client:
            client.query("mailbox", "user@example.org")  # cached from here on
            for process in processes:
                process.start()
            time.sleep(1.0)
            waits = []
            for _ in range(40):
                started = time.monotonic()
                client.query("mailbox", "user@example.org")
                waits.append((time.monotonic() - started) * 1000)
                time.sleep(0.1)
        waits.sort()
        print(
            f"{flooders} flooders: median {statistics.median(waits):.1f} ms, "
            f"p90 {waits[int(len(waits) * 0.9) - 1]:.1f} ms, max {waits[-1]:.1f} ms"
        )
    finally:
        for process in processes:
            process.kill()
        running.stop()
        stub.stop()


if __name__ == "__main__":
    main()
