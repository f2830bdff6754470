"""The adapter's benchmark: ``python bench/run.py`` (``--smoke`` for a few-second check).

Processes: the server under test on CPU 0 (the adapter, ``python -m adapter``; a constant-reply
socketmap server, the ceiling; Podop), and on CPU 1 a userli stand-in and a compiled closed-loop
load generator (bench/loadgen.c: each connection sends its next request only after the reply,
like Postfix processes). Every row prints the CPU share of each process over its measured
window: the ceiling server near 1.0 proves that the load generator is not the bottleneck.

Rows, over TCP and a UNIX socket, at several connection counts: the ceiling; the adapter hot (a
realistic hot set of 100,000 distinct keys across the four maps, all cached (NOTFOUND too:
LOOKUP_NEGATIVE_TTL 300), bench/traffic.py);
the adapter cold (lookups of users never asked before, every one a userli call, with the hot set
already in the cache) and Podop beside it over UNIX. Then memory: the adapter's RSS with 500 idle
connections after 300,000 distinct lookups (LOOKUP_CACHE_SIZE 100,000) and after each 300,000
more (the cache turns; memory must stay flat), and with ``--million``
after 1,000,000 (LOOKUP_CACHE_SIZE 1,000,000). The longest garbage-collector pause of each
adapter comes from its own metrics.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import traffic
from standins import ConstantReply, UserliStandIn, serve

SERVER_CPU, LOAD_CPU = 0, 1
HOT_KEYS = 100_000
COLD_PER_RUN = 60_000  # fresh keys per cold run: more than any run asks, so none repeats
# NOTFOUND answers cached too (LOOKUP_NEGATIVE_TTL is 0 by default), so the whole hot set is.
CACHED = {"LOOKUP_NEGATIVE_TTL": "300"}


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


def run_standin(address: str, ready: object) -> None:
    serve(UserliStandIn, address, LOAD_CPU, ready)


def run_ceiling(address: str, ready: object) -> None:
    serve(ConstantReply, address, SERVER_CPU, ready)


@dataclass
class Result:
    rate: float
    latency_ms: dict[str, float]  # p50, p95, p99, max
    answers: Counter[str]
    replies: int  # all replies, warm-up included
    load_cpu: float  # the load generator's own share of its core
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> share of a core

    def summary(self) -> str:
        ms = self.latency_ms
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.answers.items()) if v)
        cpu = " ".join(f"{name} {share:.2f}" for name, share in self.cpu.items())
        return (
            f"{self.rate:9.0f}/s  p50 {ms['p50']:6.2f}  p95 {ms['p95']:6.2f}  p99 {ms['p99']:6.2f}"
            f"  max {ms['max']:7.2f} ms  {counts}  cpu: {cpu} load {self.load_cpu:.2f}"
        )


class Load:
    """The compiled load generator."""

    def __init__(self, workdir: Path) -> None:
        self.binary = workdir / "loadgen"
        self.workdir = workdir
        source = Path(__file__).resolve().parent / "loadgen.c"
        try:
            subprocess.run(["gcc", "-O2", "-o", str(self.binary), str(source)], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"cannot compile bench/loadgen.c with gcc: {exc}") from exc

    def run(
        self,
        address: str,
        payloads: list[bytes],
        connections: int,
        seconds: float,
        processes: dict[str, int] | None = None,
        warmup: float = 0.5,
    ) -> Result:
        """``seconds`` 0: send every request once (to fill a cache). ``processes``: name -> PID
        whose CPU share to report."""
        processes = processes or {}
        requests = self.workdir / "requests"
        traffic.write(str(requests), payloads)
        command = [str(self.binary), address, str(connections), str(warmup), str(seconds), str(requests)]
        done = subprocess.run(
            command + [str(pid) for pid in processes.values()], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed: {done.stderr.strip()}")
        fields = dict(item.split("=", 1) for item in done.stdout.split())
        shares = [float(s) for s in fields["cpu"].split(",")]
        return Result(
            rate=int(fields["replies"]) / float(fields["seconds"]),
            latency_ms={p: float(fields[p]) for p in ("p50", "p95", "p99", "max")},
            answers=Counter({w: int(fields[w]) for w in ("OK", "NOTFOUND", "TEMP", "PERM", "other")}),
            replies=int(fields["total"]),
            load_cpu=shares[0],
            cpu=dict(zip(processes, shares[1:], strict=True)),
        )


class Server:
    """A socketmap server under test: a process of its own on CPU 0, ready once it accepts."""

    def __init__(self, name: str, command: list[str], address: str, env: dict[str, str] | None = None) -> None:
        self.address = address
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),
        )
        self.pid = self.process.pid
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

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

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
            "POLICY_LISTEN_ADDR": "off",
            "MAX_CONNECTIONS": "1000",
            "LOG_LEVEL": "error",
            **env,
        }
        super().__init__("the adapter", [sys.executable, "-m", "adapter"], address, settings)

    def metric(self, prefix: str) -> float:
        """The sum of every sample whose line starts with ``prefix`` (name and labels)."""
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    def userli_calls(self) -> float:
        return self.metric("userli_postfix_adapter_http_client_requests_total{")

    def gc_pause_ms(self) -> str:
        """The longest pause of each collector generation since start."""
        name = "userli_postfix_adapter_gc_pause_max_seconds"
        pauses = [self.metric(f'{name}{{generation="{g}"}}') * 1000 for g in "012"]
        return ", ".join(f"gen{g} {p:.1f} ms" for g, p in enumerate(pauses))


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


Row = Callable[[], Result]


def interleaved(rows: dict[str, Row], runs: int) -> dict[str, list[Result]]:
    """Every row once per round, ``runs`` rounds: rows compared side by side share the machine's
    drift (this one's throughput wanders by 10-15 % over a minute), instead of one row's runs
    all coming before the other's."""
    results: dict[str, list[Result]] = {label: [] for label in rows}
    for _ in range(runs):
        for label, row in rows.items():
            results[label].append(row())
    return results


def report(label: str, results: list[Result], base: float | None = None, note: str = "") -> float:
    rate = statistics.median(r.rate for r in results)
    best = min(results, key=lambda r: abs(r.rate - rate))  # the median run's details
    ratio = f"  {rate / base:4.2f}x ceiling" if base else ""
    print(f"  {label:22s} {best.summary()}{ratio}{note}", flush=True)
    return rate


class Checks:
    """What makes a run fail: wrong answers, and a load generator that set the pace."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def answers(self, label: str, results: list[Result], ok_share: float | None = None) -> None:
        for result in results:
            bad = result.answers["TEMP"] + result.answers["PERM"] + result.answers["other"]
            answered = result.answers["OK"] + result.answers["NOTFOUND"]
            if bad or not answered:
                self.failures.append(f"{label}: {bad} answers neither OK nor NOTFOUND, {answered} answered")
            elif ok_share is not None and abs(result.answers["OK"] / answered - ok_share) > 0.05:
                share = result.answers["OK"] / answered
                self.failures.append(f"{label}: {share:.2f} of the answers OK, the data set has {ok_share:.2f}")

    def ceiling(self, label: str, results: list[Result], connections: int, smoke: bool) -> None:
        """From 10 connections on, the ceiling server must be the bottleneck. With one, a closed
        loop waits on itself (request, reply, request): neither side can fill its core. A smoke
        run is too short for /proc's 10 ms ticks."""
        share = statistics.median(r.cpu["server"] for r in results)
        if share < 0.95 and connections >= 10 and not smoke:
            self.failures.append(f"{label}: the server used {share:.2f} of its core: the load set the pace")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does it run and answer?")
    parser.add_argument("--modes", default="hot,cold", help="hot (cache hits), cold (userli calls), or both")
    parser.add_argument("--transports", default="tcp,unix", help="tcp, unix, or both")
    parser.add_argument("--concurrency", default="1,10,50,200", help="connection counts")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS measurement")
    parser.add_argument("--million", action="store_true", help="also RSS with 1,000,000 cached keys (minutes)")
    parser.add_argument(
        "--podop",
        default="auto",
        help="Python with podop installed, to run it as the cold-path peer over UNIX (auto: this one if it can; off)",
    )
    args = parser.parse_args()
    hot_size = HOT_KEYS
    if args.smoke:
        args.runs, args.seconds, hot_size = 1, 0.3, 5_000
    concurrency = [1, 10] if args.smoke else [int(c) for c in args.concurrency.split(",")]
    transports = ["tcp"] if args.smoke else args.transports.split(",")
    modes = args.modes.split(",")
    podop = podop_python(args.podop)
    os.sched_setaffinity(0, {LOAD_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="adapter-bench-"))
    load = Load(workdir)
    userli_address = f"127.0.0.1:{free_port()}"
    userli = f"http://{userli_address}"
    standin = start(run_standin, userli_address)
    peers = [standin]
    checks = Checks()
    hot, ok_share = traffic.hot_set(hot_size)
    cold_next = 0

    def cold(count: int = COLD_PER_RUN) -> list[bytes]:
        nonlocal cold_next
        cold_next += count
        return traffic.cold_keys(cold_next - count, count)

    def hot_set() -> list[bytes]:
        return hot

    def row(address: str, payloads: Callable[[], list[bytes]], connections: int, watched: dict[str, int]) -> Row:
        return lambda: load.run(address, payloads(), connections, args.seconds, watched)

    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; servers on CPU {SERVER_CPU}, load "
        f"generator and userli stand-in on CPU {LOAD_CPU}\nhot set: {len(set(hot)):,} distinct keys, "
        f"{len(hot):,} requests a round, {ok_share:.2f} of them OK"
    )
    try:
        for transport in transports:

            def address(name: str, transport: str = transport) -> str:
                return str(workdir / f"{name}.sock") if transport == "unix" else f"127.0.0.1:{free_port()}"

            print(f"\n{transport.upper()}", flush=True)
            if "hot" in modes:
                ceiling_address = address("ceiling")
                ceiling = start(run_ceiling, ceiling_address)
                adapter = Adapter(userli, address("adapter-hot"), **CACHED)
                try:
                    load.run(adapter.address, hot, 50, 0)  # every key once: all cached
                    rows: dict[str, Row] = {}
                    for c in concurrency:
                        rows[f"ceiling C={c}"] = row(ceiling_address, hot_set, c, {"server": ceiling.pid})
                        rows[f"adapter hot C={c}"] = row(adapter.address, hot_set, c, {"adapter": adapter.pid})
                    results = interleaved(rows, args.runs)
                    for c in concurrency:
                        label = f"ceiling C={c}"
                        checks.ceiling(label, results[label], c, args.smoke)
                        ceiling_rate = report(label, results[label])
                        label = f"adapter hot C={c}"
                        report(label, results[label], ceiling_rate)
                        checks.answers(label, results[label], ok_share)
                    print(f"  {'GC, longest':22s} {adapter.gc_pause_ms()}; RSS {adapter.rss_mb():.0f} MB")
                finally:
                    adapter.stop()
                    ceiling.kill()
            if "cold" in modes:
                adapter = Adapter(userli, address("adapter-cold"), **CACHED)
                with_peer = podop is not None and transport == "unix"  # Podop: UNIX only
                peer = Podop(podop, userli, address("podop")) if with_peer else None  # type: ignore[arg-type]
                try:
                    load.run(adapter.address, hot, 50, 0)  # the hot set already cached
                    rss_before, calls = adapter.rss_mb(), adapter.userli_calls()
                    rows = {}
                    for c in concurrency:
                        watched = {"adapter": adapter.pid, "userli": standin.pid}
                        rows[f"adapter cold C={c}"] = row(adapter.address, cold, c, watched)
                        if peer is not None:
                            rows[f"podop C={c}"] = row(
                                peer.address, cold, c, {"podop": peer.pid, "userli": standin.pid}
                            )
                    results = interleaved(rows, args.runs)
                    adapter_replies = sum(r.replies for label, rs in results.items() if "adapter" in label for r in rs)
                    per_lookup = (adapter.userli_calls() - calls) / adapter_replies
                    rates = {}
                    for c in concurrency:
                        label = f"adapter cold C={c}"
                        rates[c] = report(label, results[label])
                        checks.answers(label, results[label], 1.0)
                        if peer is not None:
                            label = f"podop C={c}"
                            peer_rate = report(label, results[label])
                            checks.answers(label, results[label], 1.0)
                            print(f"  {'adapter / podop':22s} {rates[c] / peer_rate:9.2f}x", flush=True)
                    if 10 in rates and 200 in rates:
                        print(f"  {'cold C=200 / C=10':22s} {rates[200] / rates[10]:9.2f}x")
                    print(
                        f"  {'userli calls':22s} {per_lookup:9.2f} per adapter lookup\n  {'GC, longest':22s} "
                        f"{adapter.gc_pause_ms()}; RSS {rss_before:.0f} MB before the cold rows, "
                        f"{adapter.rss_mb():.0f} MB after"
                    )
                finally:
                    adapter.stop()
                    if peer is not None:
                        peer.stop()
        if not (args.smoke or args.no_memory):
            print("\nMEMORY")
            sizes = [(100_000, 300_000)] + ([(1_000_000, 1_000_000)] if args.million else [])
            for cache_size, lookups in sizes:
                adapter = Adapter(userli, f"127.0.0.1:{free_port()}", LOOKUP_CACHE_SIZE=str(cache_size), **CACHED)
                try:
                    load.run(adapter.address, hot, 50, 0)
                    load.run(adapter.address, cold(lookups - len(set(hot))), 50, 0)
                    port = int(adapter.address.rsplit(":", 1)[1])
                    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(500)]
                    time.sleep(1)
                    entries = adapter.metric("userli_postfix_adapter_lookup_cache_entries")
                    print(
                        f"  LOOKUP_CACHE_SIZE={cache_size:,}, {lookups:,} distinct lookups, {entries:,.0f} entries, "
                        f"500 idle connections: RSS {adapter.rss_mb():.1f} MB; GC, longest: {adapter.gc_pause_ms()}",
                        flush=True,
                    )
                    if cache_size == 100_000:  # and on: the cache turns, memory must not grow
                        for more in range(2):
                            load.run(adapter.address, cold(300_000), 50, 0)
                            print(
                                f"  {' ' * 22}after {lookups + 300_000 * (more + 1):,} distinct lookups: "
                                f"RSS {adapter.rss_mb():.1f} MB; GC, longest: {adapter.gc_pause_ms()}",
                                flush=True,
                            )
                    for sock in idle:
                        sock.close()
                finally:
                    adapter.stop()
    finally:
        for peer in peers:
            peer.kill()
    for failure in checks.failures:
        print(failure, file=sys.stderr)
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
