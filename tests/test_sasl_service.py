"""The SASL listener on loopback: a plain blocking Dovecot-auth client, the HTTP stand-in for userli."""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import StartAdapter, UserliStub, metric, wait_until

from adapter.config import ListenAddress


class AuthClient:
    def __init__(self, address: int | str) -> None:
        if isinstance(address, int):
            self.sock = socket.create_connection(("127.0.0.1", address), timeout=10)
        else:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(10)
            self.sock.connect(address)
        self._buffer = b""
        self.handshake = []
        while not self.handshake or self.handshake[-1] != "DONE":
            self.handshake.append(self.line())
        self.sock.sendall(b"VERSION\t1\t0\nCPID\t1234\n")

    def line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def plain(self, request_id: int, user: str, password: str) -> str:
        response = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.sock.sendall(f"AUTH\t{request_id}\tPLAIN\tservice=smtp\tnologin\tresp={response}\n".encode())
        return self.line()

    def login(self, request_id: int, user: str, password: str) -> str:
        self.sock.sendall(f"AUTH\t{request_id}\tLOGIN\tservice=smtp\tnologin\n".encode())
        assert self.line() == f"CONT\t{request_id}\t{base64.b64encode(b'Username:').decode()}"
        self.sock.sendall(f"CONT\t{request_id}\t{base64.b64encode(user.encode()).decode()}\n".encode())
        assert self.line() == f"CONT\t{request_id}\t{base64.b64encode(b'Password:').decode()}"
        self.sock.sendall(f"CONT\t{request_id}\t{base64.b64encode(password.encode()).decode()}\n".encode())
        return self.line()

    def close(self) -> None:
        self.sock.close()


def sasl_port(adapter: object) -> int:
    port = adapter.service.sasl.bound.port  # type: ignore[attr-defined]
    assert port is not None
    return port


TCP = ListenAddress(host="127.0.0.1", port=0)


def test_handshake_and_both_mechanisms(start_adapter: StartAdapter) -> None:
    adapter = start_adapter(sasl_address=TCP, sasl_failure_delay=0)
    client = AuthClient(sasl_port(adapter))
    commands = [line.split("\t")[0] for line in client.handshake]
    assert commands == ["VERSION", "MECH", "MECH", "SPID", "CUID", "COOKIE", "DONE"]
    assert client.plain(1, "User@Example.org", "correct horse") == "OK\t1\tuser=user@example.org"
    assert client.login(2, "user@example.org", "correct horse") == "OK\t2\tuser=user@example.org"
    wrong = client.plain(3, "user@example.org", "wrong")
    assert wrong == "FAIL\t3\treason=authentication failed\tuser=user@example.org"
    assert client.plain(4, "spammer@example.org", "pw") == (
        "FAIL\t4\treason=user disabled due to spam role\tuser=spammer@example.org"
    )
    assert client.plain(5, "other@example.org", "tab\tand\\ back") == "OK\t5\tuser=other@example.org"
    client.close()
    assert metric(adapter.http_url, 'userli_postfix_adapter_sasl_auth_total{mechanism="PLAIN",result="success"}') == 2


def test_userli_down_closes_the_connection_without_an_answer(start_adapter: StartAdapter, userli: UserliStub) -> None:
    adapter = start_adapter(sasl_address=TCP)
    userli.stop()
    client = AuthClient(sasl_port(adapter))
    with pytest.raises(ConnectionError):  # never OK, never a FAIL that reads as "wrong password"
        client.plain(1, "user@example.org", "correct horse")
    client.close()
    userli.restart()
    again = AuthClient(sasl_port(adapter))  # Postfix reconnects for its next AUTH
    assert again.plain(2, "user@example.org", "correct horse") == "OK\t2\tuser=user@example.org"
    again.close()


def test_temporary_failure_resets_so_the_next_write_fails_at_once(
    start_adapter: StartAdapter, userli: UserliStub
) -> None:
    """smtpd only notices a dead auth connection when a write fails: after a graceful close its
    next AUTH would go into the dead socket and get 454 again although userli is back."""
    adapter = start_adapter(sasl_address=TCP)
    userli.behaviour = lambda endpoint, key: (500, b'{"error":{"message":"boom"}}')
    client = AuthClient(sasl_port(adapter))
    with pytest.raises(ConnectionResetError):  # a reset, not an end of file
        client.plain(1, "user@example.org", "correct horse")
    with pytest.raises(OSError):  # what Postfix's next AUTH write meets: it reconnects
        client.sock.sendall(b"AUTH\t2\tPLAIN\tservice=smtp\n")
    client.close()


@pytest.mark.parametrize(
    ("token", "reason"), [("wrong-token", "userli rejected the API token"), (None, "lacks the postfix scope")]
)
def test_token_or_scope_error_is_temporary_and_makes_the_adapter_unready(
    start_adapter: StartAdapter, userli: UserliStub, token: str | None, reason: str
) -> None:
    if token is None:  # a known token without the postfix scope
        userli.scopes = {"dovecot"}
    else:
        userli.token = token
    adapter = start_adapter(sasl_address=TCP, sasl_failure_delay=0)
    client = AuthClient(sasl_port(adapter))
    with pytest.raises(ConnectionError):  # never "FAIL ... authentication failed": that is 535
        client.plain(1, "user@example.org", "correct horse")
    client.close()
    assert metric(adapter.http_url, 'userli_postfix_adapter_sasl_auth_total{mechanism="PLAIN",result="error"}') == 1
    invalid = 'userli_postfix_adapter_sasl_auth_total{mechanism="PLAIN",result="invalid_credentials"}'
    assert metric(adapter.http_url, invalid) == 0
    with pytest.raises(urllib.error.HTTPError) as ready:
        urllib.request.urlopen(adapter.http_url + "/ready", timeout=10)
    assert ready.value.code == 503 and reason in json.loads(ready.value.read())["error"]


def test_sasl_timeout_is_not_capped_by_userli_timeout(start_adapter: StartAdapter, userli: UserliStub) -> None:
    adapter = start_adapter(sasl_address=TCP, userli_timeout=0.3, sasl_timeout=3.0)
    userli.delay = 1.0  # slower than USERLI_TIMEOUT, well within SASL_TIMEOUT
    client = AuthClient(sasl_port(adapter))
    assert client.plain(1, "user@example.org", "correct horse") == "OK\t1\tuser=user@example.org"
    client.close()


@pytest.mark.parametrize("hello", [b"", b"VERSION\t1\t0\n"])  # no VERSION; VERSION without CPID
def test_auth_before_the_client_handshake_is_not_answered(start_adapter: StartAdapter, hello: bytes) -> None:
    adapter = start_adapter(sasl_address=TCP)
    sock = socket.create_connection(("127.0.0.1", sasl_port(adapter)), timeout=5)
    response = base64.b64encode(b"\0user@example.org\0correct horse").decode()
    sock.sendall(hello + f"AUTH\t1\tPLAIN\tservice=smtp\tresp={response}\n".encode())
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    assert data.endswith(b"DONE\n")  # the handshake, then the close: like Dovecot, no answer
    sock.close()


def test_failure_delay_does_not_block_other_connections(start_adapter: StartAdapter) -> None:
    adapter = start_adapter(sasl_address=TCP, sasl_failure_delay=1.5)
    slow, fast = AuthClient(sasl_port(adapter)), AuthClient(sasl_port(adapter))
    failed: list[tuple[str, float]] = []
    started = time.monotonic()
    guesser = threading.Thread(
        target=lambda: failed.append((slow.plain(1, "user@example.org", "guess"), time.monotonic()))
    )
    guesser.start()
    time.sleep(0.2)
    assert fast.plain(1, "user@example.org", "correct horse") == "OK\t1\tuser=user@example.org"
    answered = time.monotonic()
    guesser.join(10)
    assert failed[0][0] == "FAIL\t1\treason=authentication failed\tuser=user@example.org"
    assert answered < failed[0][1]  # the good login was answered while the guess was held back
    assert failed[0][1] - started >= 1.5


def test_idle_auth_connection_is_kept(start_adapter: StartAdapter) -> None:
    adapter = start_adapter(sasl_address=TCP, idle_timeout=0.2)  # the socketmap idle timeout does not apply
    client = AuthClient(sasl_port(adapter))
    time.sleep(0.6)
    assert client.plain(1, "user@example.org", "correct horse") == "OK\t1\tuser=user@example.org"
    client.close()


def test_pool_full_closes_at_once(start_adapter: StartAdapter) -> None:
    adapter = start_adapter(sasl_address=TCP, max_connections=1)
    first = AuthClient(sasl_port(adapter))
    extra = socket.create_connection(("127.0.0.1", sasl_port(adapter)), timeout=5)
    assert extra.recv(100) == b""  # closed without a handshake: Postfix answers 454, the client retries
    wait_until(lambda: metric(adapter.http_url, "userli_postfix_adapter_sasl_connection_pool_full_total") == 1)
    assert first.plain(1, "user@example.org", "correct horse").startswith("OK")


def test_garbage_closes_only_that_connection(start_adapter: StartAdapter) -> None:
    adapter = start_adapter(sasl_address=TCP)
    good = AuthClient(sasl_port(adapter))
    bad = socket.create_connection(("127.0.0.1", sasl_port(adapter)), timeout=5)
    bad.sendall(b"VERSION\t9\t0\n")
    data = b""
    while chunk := bad.recv(4096):
        data += chunk
    assert data.endswith(b"DONE\n")  # the handshake, then the close
    assert good.plain(1, "user@example.org", "correct horse").startswith("OK")


def test_unix_socket_for_the_postfix_chroot(start_adapter: StartAdapter, tmp_path: Path) -> None:
    path = tmp_path / "auth"
    uid, gid = pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid
    start_adapter(
        sasl_address=ListenAddress(path=str(path)), sasl_socket_mode=0o660, sasl_socket_owner=uid, sasl_socket_group=gid
    )
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (uid, gid)
    client = AuthClient(str(path))
    assert client.plain(1, "user@example.org", "correct horse") == "OK\t1\tuser=user@example.org"
    client.close()


def test_userli_without_the_auth_route_is_454_and_ready_says_degraded(
    start_adapter: StartAdapter, userli: UserliStub
) -> None:
    userli.version = (6, 8, 0)  # POST /api/postfix/auth came with 6.9.0
    adapter = start_adapter(sasl_address=TCP)
    client = AuthClient(sasl_port(adapter))
    with pytest.raises(ConnectionError):
        client.plain(1, "user@example.org", "correct horse")
    client.close()
    with urllib.request.urlopen(adapter.http_url + "/ready", timeout=10) as response:
        body = json.loads(response.read())
    assert body == {"status": "degraded", "error": "userli has no auth route"}  # lookups still work
    userli.version = (6, 10, 3)
    again = AuthClient(sasl_port(adapter))
    assert again.plain(2, "user@example.org", "correct horse") == "OK\t2\tuser=user@example.org"
    again.close()
    with urllib.request.urlopen(adapter.http_url + "/ready", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ready"}
