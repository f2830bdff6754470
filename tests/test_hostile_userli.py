"""A hostile userli (or a broken proxy in front of it), scripted byte by byte on a raw TCP
socket, against the whole adapter. For every misbehaviour: the reply Postfix gets is TEMP (never
someone else's answer, never NOTFOUND), the next lookups on that connection and on a fresh one
are right once userli behaves, and memory and file descriptors stay bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from helpers import RunningService, SocketmapClient, UserliStub, config_for

from adapter.tls import TlsFiles

# script(connection number, request number on it, the honest answer) -> what to send: bytes in
# one write, a list of bytes in separate writes ``gap`` seconds apart, None to close without a word, or
# RESET to close with a TCP reset.
Script = Callable[[int, int, bytes], "bytes | list[bytes] | None"]
RESET = [b"<reset>"]
HALF_CLOSE = [b"<half-close>"]  # shutdown(SHUT_WR) after what came before it, then read on

WRONG = b'["intruder@evil.example"]'


def http(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


class HostileUserli:
    """userli's answers (the stand-in's data) served through a script that may mangle them."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.stub = UserliStub()  # only its answer logic: no server of its own
        self.script: Script = lambda conn, n, honest: honest
        self.early: bytes = b""  # sent on connect, before any request
        self.gap = 0.02  # seconds between the writes of a list
        self.connections = 0
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._open: set[socket.socket] = set()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        host = "localhost" if self._tls else "127.0.0.1"
        return f"{scheme}://{host}:{self._listener.getsockname()[1]}"

    def honest(self) -> None:
        self.script, self.early = (lambda conn, n, honest: honest), b""

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            number, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        self._open.add(sock)
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            if self.early:
                sock.sendall(self.early)
            buffer, request_number = b"", 0
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += sock.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                path = lines[0].split(" ")[1]
                if lines[0].startswith("POST"):
                    status, answer = self.stub.authenticate(path, headers.get("authorization", ""), body)
                else:
                    status, answer = self.stub.answer(path, headers.get("authorization", ""))
                out = self.script(number, request_number, http(status, answer))
                request_number += 1
                if out is None:
                    return
                if out is RESET:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                for piece in [out] if isinstance(out, bytes) else out:
                    if piece is HALF_CLOSE[0]:
                        sock.shutdown(socket.SHUT_WR)
                        while sock.recv(65536):
                            pass
                        return
                    sock.sendall(piece)
                    if not isinstance(out, bytes):
                        time.sleep(self.gap)
        except (OSError, ssl.SSLError):
            pass
        finally:
            self._open.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture(autouse=True)
def _prompt_threads() -> Iterator[None]:
    """The scripted server is a thread of this process: with the default 5 ms GIL switch interval
    a stray meant for 1 ms after its answer could go out 20+ ms late, when another process's
    would not. A short interval keeps the script's timing honest."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def hostile() -> Iterator[HostileUserli]:
    server = HostileUserli()
    yield server
    server.stop()


@pytest.fixture
def adapter(hostile: HostileUserli) -> Iterator[RunningService]:
    # No cache and no breaker in the way: every lookup is a userli call.
    running = RunningService(
        config_for(hostile.url, userli_timeout=1.0, cache_ttl=0, stale_ttl=0, breaker_threshold=1_000_000)
    )
    yield running
    running.stop()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_right_afterwards(adapter: RunningService, hostile: HostileUserli, client: SocketmapClient) -> None:
    hostile.honest()
    for connection in (client, SocketmapClient(adapter.socketmap_port)):
        for _ in range(3):
            assert connection.query("alias", "alias@example.org") == "OK user@example.org"
            assert connection.query("mailbox", "nobody@example.org") == "NOTFOUND "
            assert connection.query("alias", "team@example.org") == "OK user@example.org,other@example.org"
    assert client.query("mailbox", "user@example.org") == "OK 1"


def only_temp_or_right(replies: list[str], right: str) -> None:
    assert all(reply == right or reply.startswith("TEMP ") for reply in replies), replies


def test_a_second_response_in_the_same_read_is_never_the_answer(
    adapter: RunningService, hostile: HostileUserli
) -> None:
    hostile.script = lambda conn, n, honest: http(200, WRONG) + honest  # which one is the answer?
    with SocketmapClient(adapter.socketmap_port) as client:
        assert client.query("alias", "alias@example.org").startswith("TEMP ")
        assert_right_afterwards(adapter, hostile, client)


def test_strays_just_after_the_answer_never_reach_another_lookup(
    adapter: RunningService, hostile: HostileUserli
) -> None:
    """A broken proxy's duplicate, a millisecond after each answer: one busy client, one lookup
    after another. Acknowledged at once (TCP_QUICKACK) and given a rest before reuse, the stray
    meets an idle connection, which it closes."""
    hostile.gap = 0.001
    hostile.script = lambda conn, n, honest: [honest, http(200, WRONG)]
    with SocketmapClient(adapter.socketmap_port) as client:
        # Enough lookups for the kernel to leave quick-ACK mode: a server with Nagle's algorithm
        # on (this one) then holds each stray until the answer is acknowledged.
        replies = [client.query("alias", "alias@example.org") for _ in range(100)]
        only_temp_or_right(replies, "OK user@example.org")
        assert "OK user@example.org" in replies
        assert_right_afterwards(adapter, hostile, client)


def test_late_strays_cannot_reach_another_lookup_without_keep_alive(hostile: HostileUserli) -> None:
    """A stray 20 ms after its answer would pass for the next answer on a reused connection: the
    residual risk of keep-alive (README). USERLI_KEEPALIVE=0 rules it out."""
    hostile.script = lambda conn, n, honest: [honest, http(200, WRONG)]
    running = RunningService(config_for(hostile.url, userli_keepalive=0, cache_ttl=0, stale_ttl=0))
    try:
        with SocketmapClient(running.socketmap_port) as client:
            replies = [client.query("alias", "alias@example.org") for _ in range(30)]
        assert replies == ["OK user@example.org"] * 30
        assert hostile.connections == 30
    finally:
        running.stop()


def test_a_server_that_answers_before_it_is_asked(adapter: RunningService, hostile: HostileUserli) -> None:
    hostile.early = http(200, WRONG)
    with SocketmapClient(adapter.socketmap_port) as client:
        replies = [client.query("alias", "alias@example.org") for _ in range(20)]
        assert all(reply.startswith("TEMP ") for reply in replies), replies
        assert_right_afterwards(adapter, hostile, client)


def test_a_gzip_bomb_is_never_decoded(adapter: RunningService, hostile: HostileUserli) -> None:
    """3 kB that decode to 100 MB, twice over (the issue's was 2 GB): refused unread."""
    bomb = gzip.compress(gzip.compress(b" " * 100_000_000))
    before = rss_bytes()
    hostile.script = lambda conn, n, honest: http(200, bomb, b"Content-Encoding: gzip, gzip\r\n")
    with SocketmapClient(adapter.socketmap_port) as client:
        started = time.monotonic()
        for _ in range(5):
            assert client.query("alias", "alias@example.org").startswith("TEMP ")
        assert time.monotonic() - started < 2.0  # the loop was never blocked decoding
        assert rss_bytes() - before < 50_000_000
        assert_right_afterwards(adapter, hostile, client)


def test_answers_near_postfix_s_size_limit_are_whole(adapter: RunningService, hostile: HostileUserli) -> None:
    """An alias with about 3,000 destinations (~95 kB): the head limit must not count its body."""
    destinations = [f"destination{i:06d}@example.org" for i in range(3_200)]
    hostile.stub.data["alias"]["big@example.org"] = destinations
    with SocketmapClient(adapter.socketmap_port) as client:
        for _ in range(200):
            assert client.query("alias", "big@example.org") == "OK " + ",".join(destinations)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 100,
        b"HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\n[]",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n[]",  # then the server closes: truncated
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"y" * 70_000 + b"\r\n\r\n[]",
        None,  # closed without a word
    ],
    ids=[
        "upgrade",
        "informational-storm",
        "redirect-not-followed",
        "not-http",
        "bad-chunk",
        "conflicting-lengths",
        "length-and-chunked",
        "truncated",
        "head-too-large",
        "closed",
    ],
)
def test_broken_answers_are_temp(
    adapter: RunningService, hostile: HostileUserli, answer: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    hostile.script = lambda conn, n, honest: answer
    with caplog.at_level(logging.ERROR), SocketmapClient(adapter.socketmap_port) as client:
        for _ in range(3):
            assert client.query("alias", "alias@example.org").startswith("TEMP "), answer
        assert_right_afterwards(adapter, hostile, client)
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]  # every parser error caught


@pytest.mark.parametrize("half", [False, True], ids=["reset", "half-answer-then-reset"])
def test_a_connection_reset_is_temp(adapter: RunningService, hostile: HostileUserli, half: bool) -> None:
    # half: the first answer stops after 20 bytes (then nothing: a read timeout), the rest are resets
    hostile.script = (lambda conn, n, honest: [honest[:20]] if n == 0 else RESET) if half else (lambda c, n, h: RESET)
    with SocketmapClient(adapter.socketmap_port) as client:
        for _ in range(3):
            assert client.query("alias", "alias@example.org").startswith("TEMP ")
        assert_right_afterwards(adapter, hostile, client)


def test_half_closes(adapter: RunningService, hostile: HostileUserli) -> None:
    """An answer without a length ends where the server half-closes: whole. No answer: TEMP."""
    close_delimited = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n["user@example.org"]'
    hostile.script = lambda conn, n, honest: [close_delimited, *HALF_CLOSE]
    with SocketmapClient(adapter.socketmap_port) as client:
        assert client.query("alias", "alias@example.org") == "OK user@example.org"
        hostile.script = lambda conn, n, honest: HALF_CLOSE
        assert client.query("alias", "alias@example.org").startswith("TEMP ")
        assert_right_afterwards(adapter, hostile, client)


def test_an_answer_byte_by_byte_is_whole(adapter: RunningService, hostile: HostileUserli) -> None:
    hostile.script = lambda conn, n, honest: [*(honest[i : i + 1] for i in range(40)), honest[40:]]
    with SocketmapClient(adapter.socketmap_port, timeout=20) as client:
        assert client.query("alias", "alias@example.org") == "OK user@example.org"


def test_a_hostile_userli_cannot_mint_metric_series(adapter: RunningService, hostile: HostileUserli) -> None:
    statuses = iter([code for code in range(201, 600) if code not in (204, 304)])  # bodiless ones wait
    hostile.script = lambda conn, n, honest: http(next(statuses), b"[]")
    with SocketmapClient(adapter.socketmap_port) as client:
        for _ in range(350):
            assert client.query("alias", "alias@example.org").startswith("TEMP ")
    exposition = urllib_get(adapter.http_url + "/metrics")
    series = [
        line
        for line in exposition.splitlines()
        if line.startswith("userli_postfix_adapter_http_client_requests_total{")
    ]
    assert len(series) <= 25, series


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_a_long_hostile_run_leaves_memory_and_descriptors_bounded(
    adapter: RunningService, hostile: HostileUserli
) -> None:
    modes: list[Script] = [
        lambda conn, n, honest: http(200, WRONG) + honest,
        lambda conn, n, honest: [honest, http(200, WRONG)],  # 1 ms apart (hostile.gap)
        lambda conn, n, honest: http(200, gzip.compress(b"[]" * 100_000), b"Content-Encoding: gzip\r\n"),
        lambda conn, n, honest: None,
        lambda conn, n, honest: b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ]
    hostile.gap = 0.001
    with SocketmapClient(adapter.socketmap_port) as client:
        client.query("alias", "alias@example.org")
        fds, rss = open_fds(), rss_bytes()
        for round_number in range(200):
            hostile.script = modes[round_number % len(modes)]
            only_temp_or_right([client.query("alias", "alias@example.org")], "OK user@example.org")
        assert_right_afterwards(adapter, hostile, client)
        time.sleep(0.2)
        assert open_fds() <= fds + 40  # kept-alive connections to userli, at most
        assert rss_bytes() - rss < 30_000_000


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


def tls_server(authority: trustme.CA, host: str = "localhost") -> HostileUserli:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(host).configure_cert(context)
    return HostileUserli(tls=context)


def test_a_certificate_from_an_unknown_ca_is_temp_and_logged_with_its_reason(
    authority: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    server = tls_server(authority)
    running = RunningService(config_for(server.url, userli_timeout=1.0, cache_ttl=0, stale_ttl=0))
    try:
        with caplog.at_level(logging.WARNING, logger="adapter"), SocketmapClient(running.socketmap_port) as client:
            assert client.query("alias", "alias@example.org") == "TEMP userli TLS failure"
        failing = next(r for r in caplog.records if r.getMessage() == "userli is failing")
        assert "certificate" in failing.hint
    finally:
        running.stop()
        server.stop()


def test_a_private_ca_and_a_client_certificate(authority: trustme.CA, tmp_path: Path) -> None:
    """USERLI_CA_FILE trusts a private CA; USERLI_CLIENT_CERT/KEY answer a server that asks for one."""
    ca_file, cert_file = tmp_path / "ca.pem", tmp_path / "client.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    client_cert = authority.issue_cert("adapter@example.org")
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    authority.configure_trust(context)
    server = HostileUserli(tls=context)
    with_cert = RunningService(
        config_for(server.url, userli_tls=TlsFiles(ca_file=str(ca_file), client_cert=str(cert_file)), cache_ttl=0)
    )
    without_cert = RunningService(config_for(server.url, userli_tls=TlsFiles(ca_file=str(ca_file)), cache_ttl=0))
    try:
        with SocketmapClient(with_cert.socketmap_port) as client:
            assert client.query("alias", "alias@example.org") == "OK user@example.org"
        with SocketmapClient(without_cert.socketmap_port) as client:
            assert client.query("alias", "alias@example.org").startswith("TEMP ")  # the server wants a certificate
    finally:
        with_cert.stop()
        without_cert.stop()
        server.stop()
