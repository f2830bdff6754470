"""Fairness between socketmap clients: how long a well-behaved client's cached lookup waits while
20 clients pipeline requests that are answered locally and never read a reply (issue 13).

The adapter runs in this process, pinned to CPU 0; the flooding clients are processes pinned to
CPU 1, so the wait measured is the server's, not the load generator's. Prints the median, 90th
percentile and maximum of 40 lookups, 100 ms apart.

    python bench/fairness.py [FLOODERS]
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import RunningService, UserliStub, config_for, waits_behind_flooders


def main() -> None:
    flooders = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    os.sched_setaffinity(0, {0})
    stub = UserliStub().start()
    running = RunningService(config_for(stub.url))
    try:
        waits = waits_behind_flooders(
            running.socketmap_port, flooders, lookups=40, gap=0.1, flood_seconds=12.0, cpu=1, start_method="fork"
        )
    finally:
        running.stop()
        stub.stop()
    waits = sorted(wait * 1000 for wait in waits)
    print(
        f"{flooders} flooders: median {statistics.median(waits):.1f} ms, "
        f"p90 {waits[int(len(waits) * 0.9) - 1]:.1f} ms, max {waits[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
