"""The adapter's benchmark: ``python bench/run.py`` (``--smoke`` for a few-second check).

Processes: the adapter under test (``python -m adapter``) and a constant-reply socketmap server
(the ceiling) on CPU 0; a fast userli stand-in and the closed-loop load generator on CPU 1.
Reports lookups/s, latency percentiles and answer counts for hot keys (cache hits) and cold keys
(every lookup a userli call, cache off), at several connection counts, over TCP and a UNIX socket,
and the adapter's memory with 500 open connections and 100,000 cached keys.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import Result, netstring, run
from standins import ConstantReply, UserliStandIn, dataset, serve, user_address

ADAPTER_CPU, LOAD_CPU = 0, 1
USERS = 100_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(target: object, *args: object) -> multiprocessing.Process:
    ready = multiprocessing.Event()
    process = multiprocessing.Process(target=target, args=(*args, ready), daemon=True)
    process.start()
    if not ready.wait(30):
        raise RuntimeError(f"{target} did not start")
    return process


def standin_factory() -> UserliStandIn:
    return UserliStandIn(ANSWERS)


ANSWERS: dict[bytes, bytes] = {}


def run_standin(address: str, ready: object) -> None:
    ANSWERS.update(dataset(USERS))
    serve(standin_factory, address, LOAD_CPU, ready)


def run_ceiling(address: str, ready: object) -> None:
    serve(ConstantReply, address, ADAPTER_CPU, ready)


class Server:
    """A socketmap server under test: a process of its own on CPU 0, ready once it accepts."""

    def __init__(self, name: str, command: list[str], address: str, env: dict[str, str] | None = None) -> None:
        self.address = address
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            preexec_fn=lambda: os.sched_setaffinity(0, {ADAPTER_CPU}),
        )
        deadline = time.monotonic() + 30
        while not self._listening():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.05)

    def _listening(self) -> bool:
        family = socket.AF_UNIX if self.address.startswith("/") else socket.AF_INET
        target = self.address if self.address.startswith("/") else ("127.0.0.1", int(self.address.rsplit(":", 1)[1]))
        try:
            with socket.socket(family) as probe:
                probe.connect(target)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class Adapter(Server):
    """``python -m adapter``, configured by environment variables."""

    def __init__(self, userli: str, address: str, **env: str) -> None:
        self.metrics = f"127.0.0.1:{free_port()}"
        settings = {
            "USERLI_TOKEN": "bench",
            "USERLI_BASE_URL": userli,
            "SOCKETMAP_LISTEN_ADDR": address,
            "METRICS_LISTEN_ADDR": self.metrics,
            "POLICY_LISTEN_ADDR": "",
            "MAX_CONNECTIONS": "1000",
            "LOG_LEVEL": "error",
            **env,
        }
        super().__init__("the adapter", [sys.executable, "-m", "adapter"], address, settings)

    def userli_calls(self) -> float:
        """HTTP requests the adapter has made to userli so far (from its /metrics)."""
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        prefix = "userli_postfix_adapter_http_client_requests_total{"
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


class Podop(Server):
    """Podop (Mailu's socketmap proxy, ``pip install podop``): one URL table, the peer the issue
    compares the cold path with. It listens on a UNIX socket only."""

    def __init__(self, python: str, userli: str, path: str) -> None:
        code = (
            "from podop import run_server; "
            f"run_server(0, 'postfix', {path!r}, [('mailbox', 'url', '{userli}/api/postfix/mailbox/§')])"
        )
        super().__init__("podop", [python, "-c", code], path)


def podop_python(choice: str) -> str | None:
    """The interpreter to run Podop with: ``auto`` is this one if it has podop installed."""
    if choice == "off":
        return None
    python = sys.executable if choice == "auto" else choice
    found = subprocess.run([python, "-c", "import podop"], capture_output=True).returncode == 0
    if not found and choice != "auto":
        raise SystemExit(f"--podop {choice}: that interpreter cannot import podop")
    return python if found else None


def requests(keys: list[str]) -> list[bytes]:
    return [netstring(f"mailbox {key}".encode()) for key in keys]


def measure(address: str, payloads: list[bytes], connections: int, seconds: float, runs: int) -> list[Result]:
    return [uvloop.run(run(address, payloads, connections, seconds)) for _ in range(runs)]


def report(label: str, results: list[Result], ceiling: float | None = None, note: str = "") -> float:
    rate = statistics.median(r.rate for r in results)
    best = min(results, key=lambda r: abs(r.rate - rate))  # the median run's details
    ratio = f"  {rate / ceiling:4.2f}x ceiling" if ceiling else ""
    print(f"  {label:28s} {best.summary()}{ratio}{note}", flush=True)
    return rate


def not_ok(results: list[Result]) -> int:
    """Answers that were not OK in the first run, or 1 if it had no answers at all."""
    return sum(n for word, n in results[0].answers.items() if word != "OK") + (0 if results[0].latencies else 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does it run and answer?")
    parser.add_argument("--modes", default="hot,cold", help="hot (cache hits), cold (userli calls), or both")
    parser.add_argument("--transports", default="tcp,unix", help="tcp, unix, or both")
    parser.add_argument("--concurrency", default="1,10,50,200", help="connection counts")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS measurement")
    parser.add_argument(
        "--podop",
        default="auto",
        help="Python with podop installed, to run it as the cold-path peer over UNIX (auto: this one if it can; off)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.seconds = 1, 0.3
    concurrency = [1, 10] if args.smoke else [int(c) for c in args.concurrency.split(",")]
    transports = ["tcp"] if args.smoke else args.transports.split(",")
    modes = args.modes.split(",")
    podop = podop_python(args.podop)
    os.sched_setaffinity(0, {LOAD_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="adapter-bench-"))
    userli = f"127.0.0.1:{free_port()}"
    peers = [start(run_standin, userli)]
    failures = 0
    hot_keys = [user_address(i) for i in range(200)]
    cold_keys = [user_address(i) for i in range(0, USERS, 7)]
    python = sys.version.split()[0]
    print(f"machine: {os.cpu_count()} CPUs, Python {python}; adapter on CPU {ADAPTER_CPU}, load on CPU {LOAD_CPU}")
    try:
        for transport in transports:

            def address(name: str, transport: str = transport) -> str:
                return str(workdir / f"{name}.sock") if transport == "unix" else f"127.0.0.1:{free_port()}"

            ceiling_address = address("ceiling")
            peers.append(start(run_ceiling, ceiling_address))
            print(f"\n{transport.upper()}")
            ceilings = {
                c: report(f"ceiling C={c}", measure(ceiling_address, requests(hot_keys), c, args.seconds, args.runs))
                for c in concurrency
            }
            for mode, env, keys in (
                ("hot", {}, hot_keys),
                ("cold", {"LOOKUP_CACHE_TTL": "0", "LOOKUP_STALE_TTL": "0"}, cold_keys),
            ):
                if mode not in modes:
                    continue
                adapter = Adapter(f"http://{userli}", address(f"adapter-{mode}"), **env)
                with_peer = podop is not None and mode == "cold" and transport == "unix"  # Podop: UNIX only
                peer = Podop(podop, f"http://{userli}", address("podop")) if with_peer else None
                try:
                    for target in (adapter, peer):
                        if target is not None:  # warm up
                            uvloop.run(run(target.address, requests(keys[:1000]), 10, 0.5, warmup=0.2))
                    for c in concurrency:
                        calls = adapter.userli_calls()
                        results = measure(adapter.address, requests(keys), c, args.seconds, args.runs)
                        calls = (adapter.userli_calls() - calls) / sum(r.replies for r in results)
                        per_call = f"  {calls:.2f} userli calls per lookup" if mode == "cold" else ""
                        rate = report(f"adapter {mode} C={c}", results, ceilings[c], per_call)
                        failures += not_ok(results)
                        if peer is not None:
                            peer_results = measure(peer.address, requests(keys), c, args.seconds, args.runs)
                            peer_rate = report(f"podop C={c}", peer_results, ceilings[c])
                            print(f"  {'adapter / podop':28s} {rate / peer_rate:9.2f}x", flush=True)
                            failures += not_ok(peer_results)
                finally:
                    adapter.stop()
                    if peer is not None:
                        peer.stop()
        if not (args.smoke or args.no_memory):
            print("\nMEMORY")
            adapter = Adapter(f"http://{userli}", f"127.0.0.1:{free_port()}")
            try:
                uvloop.run(run(adapter.address, requests([user_address(i) for i in range(USERS)]), 50, 1.0, warmup=0.0))
                idle = [
                    socket.create_connection(("127.0.0.1", int(adapter.address.rsplit(":", 1)[1]))) for _ in range(500)
                ]
                time.sleep(1)
                print(f"  adapter RSS with 500 open connections and {USERS} cached keys: {adapter.rss_mb():.1f} MB")
                for sock in idle:
                    sock.close()
            finally:
                adapter.stop()
    finally:
        for peer in peers:
            peer.kill()
    if failures:
        print(f"\n{failures} answers were not OK, or a run had no answers", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
