"""tcp_table(5): the codec alone, the listener over real sockets, and Postfix's own client
(``postmap -q KEY tcp:HOST:PORT``) against it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import StartAdapter, UserliStub
from hypothesis import given
from hypothesis import strategies as st

from adapter.config import TCP_TABLE_MAPS, Config, ConfigError, ListenAddress
from adapter.protocols import tcp_table
from adapter.userli import MAPS

LOOPBACK = ListenAddress(host="127.0.0.1", port=0)


@given(st.binary(max_size=200))
def test_encoding_round_trips_and_leaves_nothing_that_breaks_a_line(data: bytes) -> None:
    encoded = tcp_table.encode(data)
    assert tcp_table.decode(encoded) == data
    assert all(0x21 <= byte <= 0x7E for byte in encoded)  # no space, LF, control or 8-bit byte
    lower_hex = re.sub(rb"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)
    assert tcp_table.decode(lower_hex) == data  # either case of hex


def test_codec_examples() -> None:
    assert tcp_table.encode("a b%\nü".encode()) == b"a%20b%25%0A%C3%BC"
    assert tcp_table.parse_request(b"get user%40example.org") == b"user@example.org"
    assert tcp_table.parse_request(b"put a b") is None
    assert tcp_table.parse_request(b"get") is None
    assert tcp_table.found(b"a@x,b@x") == b"200 a@x,b@x\n"
    assert tcp_table.found(b"x" * 5000) == b"400 reply%20too%20large\n"
    assert len(tcp_table.found(b"x" * 4091)) == tcp_table.MAX_REPLY


def test_the_listener_variable() -> None:
    env = {"USERLI_TOKEN": "t", "TCP_TABLE_LISTEN_ADDRS": "alias=:10011, mailbox=127.0.0.1:10012"}
    assert Config.from_env(env).tcp_table_addresses == (
        ("alias", ListenAddress(port=10011)),
        ("mailbox", ListenAddress(host="127.0.0.1", port=10012)),
    )
    assert Config.from_env({"USERLI_TOKEN": "t"}).tcp_table_addresses == ()
    assert sorted(TCP_TABLE_MAPS) == sorted(MAPS)
    for bad, message in [
        ("aliases=:1", "TCP_TABLE_LISTEN_ADDRS: 'aliases=:1' is not MAP=ADDRESS"),
        (":10011", "is not MAP=ADDRESS"),
        ("alias=:1,alias=:2", "TCP_TABLE_LISTEN_ADDRS: alias is listed twice"),
        ("alias=nowhere", "TCP_TABLE_LISTEN_ADDRS: alias: 'nowhere' is not host:port"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config.from_env({"USERLI_TOKEN": "t", "TCP_TABLE_LISTEN_ADDRS": bad})


@pytest.fixture
def tables(start_adapter: StartAdapter) -> dict[str, int]:
    running = start_adapter(tcp_table_addresses=(("alias", LOOPBACK), ("mailbox", LOOPBACK)))
    return {
        name: listener.bound.port
        for name, listener in zip(("alias", "mailbox"), running.service.tcp_tables, strict=True)
    }


def ask(port: int, *lines: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(line + b"\n" for line in lines))
        received = b""
        while received.count(b"\n") < len(lines):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received.splitlines()


def test_one_listener_per_map_on_one_connection(tables: dict[str, int]) -> None:
    assert ask(
        tables["alias"],
        b"get alias@example.org",
        b"get Team@Example.ORG",  # canonical keys, as on the socketmap
        b"get nobody@example.org",
        b"get alias%40example%2eorg",  # %XX-decoded, in either case
    ) == [b"200 user@example.org", b"200 user@example.org,other@example.org", b"500 not found", b"200 user@example.org"]
    assert ask(tables["mailbox"], b"get user@example.org", b"get alias@example.org") == [b"200 1", b"500 not found"]


def test_what_cannot_be_served_is_temporary(tables: dict[str, int], userli: UserliStub) -> None:
    assert ask(tables["mailbox"], b"put a b") == [b"400 unsupported%20request"]
    userli.stop()
    assert ask(tables["mailbox"], b"get user@example.org") == [b"400 userli%20unreachable"]


def test_a_line_that_never_ends_closes_only_that_connection(tables: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", tables["alias"]), timeout=10) as sock:
        sock.sendall(b"get " + b"a" * (tcp_table.MAX_REQUEST + 10))
        assert sock.recv(100) == b""  # closed
    assert ask(tables["alias"], b"get alias@example.org") == [b"200 user@example.org"]


@pytest.fixture
def postmap(tmp_path: Path) -> list[str]:
    binary = shutil.which("postmap") or "/usr/sbin/postmap"
    if not os.path.exists(binary):
        if os.environ.get("CI"):
            pytest.fail("postmap is missing in CI: .ci/run must install the postfix package")
        pytest.skip("Postfix is not installed (apt-get install postfix)")
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("")
    os.utime(main_cf, (0, 0))  # see test_postmap.py: Postfix waits on a main.cf written just now
    return [binary, "-c", str(tmp_path)]


@pytest.mark.postfix
def test_postfixs_own_client(postmap: list[str], tables: dict[str, int], userli: UserliStub) -> None:
    def query(port: int, key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*postmap, "-q", key, f"tcp:127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
        )

    found = query(tables["alias"], "team@example.org")
    assert (found.returncode, found.stdout, found.stderr) == (0, "user@example.org,other@example.org\n", "")
    missing = query(tables["alias"], "nobody@example.org")
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "")
    assert query(tables["mailbox"], "User@Example.org").stdout == "1\n"
    userli.stop()
    failed = query(tables["mailbox"], "other@example.org")
    assert failed.returncode != 0 and failed.stdout == ""
    assert "query error" in failed.stderr, failed.stderr  # a 400: Postfix's table lookup fails, mail is deferred


def test_a_busy_port_stops_start_up_naming_the_variable(start_adapter: StartAdapter) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"TCP_TABLE_LISTEN_ADDRS=127.0.0.1:{port}"):
            start_adapter(tcp_table_addresses=(("alias", ListenAddress("127.0.0.1", port)),))
