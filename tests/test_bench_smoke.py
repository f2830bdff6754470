"""The benchmark still runs and reports (a few seconds). Its numbers live in bench/README.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_run() -> None:
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for label in ("ceiling C=1", "adapter hot C=10", "adapter cold C=10"):
        assert label in result.stdout, result.stdout
    assert "x ceiling" in result.stdout
