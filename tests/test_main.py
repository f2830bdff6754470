"""The real process: ``python -m adapter`` with an environment, as an operator starts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TOKEN, SocketmapClient, UserliStub, free_port, netstring, port_open, wait_until


def run_adapter(env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("USERLI_", "SOCKETMAP_", "METRICS_", "POLICY_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "adapter"],
        env={"POLICY_LISTEN_ADDR": f"127.0.0.1:{free_port()}", **clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def process(userli: UserliStub, ports: tuple[int, int]) -> Iterator[subprocess.Popen[str]]:
    proc = run_adapter(
        {
            "USERLI_TOKEN": TOKEN,
            "USERLI_BASE_URL": userli.url,
            "SOCKETMAP_LISTEN_ADDR": f"127.0.0.1:{ports[0]}",
            "METRICS_LISTEN_ADDR": f"127.0.0.1:{ports[1]}",
        }
    )
    wait_for_port(ports[0])
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def wait_for_port(port: int) -> None:
    wait_until(lambda: port_open(port), timeout=15)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "USERLI_TOKEN"),
        ({"USERLI_TOKEN": "x", "USERLI_TIMEOUT": "soon"}, "USERLI_TIMEOUT"),
        ({"USERLI_TOKEN": "x", "SOCKETMAP_LISTEN_ADDR": "nowhere"}, "SOCKETMAP_LISTEN_ADDR"),
        ({"USERLI_TOKEN": "x", "MAX_CONNECTIONS": "-5"}, "MAX_CONNECTIONS"),
    ],
)
def test_configuration_error_is_one_line_naming_the_variable(env: dict[str, str], variable: str) -> None:
    proc = run_adapter(env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"userli-postfix-adapter: configuration error: {variable}: ")


def test_startup_summary_has_no_token(process: subprocess.Popen[str], ports: tuple[int, int]) -> None:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    records = [json.loads(line) for line in err.splitlines()]
    started = next(r for r in records if r["msg"] == "started")
    assert started["socketmap_listen_addr"] == f"127.0.0.1:{ports[0]}"
    assert started["token_source"] == "USERLI_TOKEN"
    assert TOKEN not in err
    assert {r["level"] for r in records} <= {"info", "debug"}


def test_sigterm_drains_the_lookup_in_flight(
    process: subprocess.Popen[str], userli: UserliStub, ports: tuple[int, int]
) -> None:
    userli.delay = 1.0
    with SocketmapClient(ports[0]) as client:
        client.send(netstring(b"mailbox user@example.org"))
        wait_until(lambda: len(userli.requests) == 1)
        process.send_signal(signal.SIGTERM)
        assert client.read_reply() == "OK 1"  # answered although the stop came first
        assert client.closed_by_server()
    process.communicate(timeout=30)
    assert process.returncode == 0


def test_sigint_stops_cleanly_and_removes_the_unix_socket(userli: UserliStub, tmp_path: Path) -> None:
    path = tmp_path / "adapter.sock"
    proc = run_adapter(
        {
            "USERLI_TOKEN": TOKEN,
            "USERLI_BASE_URL": userli.url,
            "SOCKETMAP_LISTEN_ADDR": str(path),
            "METRICS_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
            "LOG_FORMAT": "text",
        }
    )
    try:
        wait_until(path.exists, timeout=15)
        with SocketmapClient(str(path)) as client:
            assert client.query("domain", "example.org") == "OK 1"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert not path.exists()
        assert " INFO adapter.service: started " in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_address_in_use_exits_1_with_one_line(userli: UserliStub) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_adapter(
            {
                "USERLI_TOKEN": TOKEN,
                "USERLI_BASE_URL": userli.url,
                "SOCKETMAP_LISTEN_ADDR": f"127.0.0.1:{port}",
                "METRICS_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
            }
        )
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert time.monotonic() - started < 20
    assert f"cannot start: SOCKETMAP_LISTEN_ADDR=127.0.0.1:{port}: " in err.strip().splitlines()[-1]


def test_healthcheck_command(process: subprocess.Popen[str], ports: tuple[int, int]) -> None:
    def healthcheck(addr: str) -> int:
        env = {**os.environ, "METRICS_LISTEN_ADDR": addr}
        return subprocess.run([sys.executable, "-m", "adapter.healthcheck"], env=env, timeout=30).returncode

    assert healthcheck(f"127.0.0.1:{ports[1]}") == 0
    assert healthcheck(f":{ports[1]}") == 0  # all interfaces: asks loopback
    assert healthcheck(f"127.0.0.1:{free_port()}") == 1  # nothing there


def test_redis_py_is_loaded_only_where_redis_is_configured() -> None:
    """Importing redis-py costs about 7 MB of a 40 MB process (bench/README)."""
    code = "import sys, adapter.__main__, adapter.service; print('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
