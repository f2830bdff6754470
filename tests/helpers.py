"""Test support: a real HTTP stand-in for userli, the service on its own event loop thread, and
a plain blocking socketmap client written independently of the adapter's codec."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import multiprocessing
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import uvloop

from adapter.config import Config, ListenAddress
from adapter.service import Service

TOKEN = "test-token-5ecret"

DATA: dict[str, dict[str, Any]] = {
    "alias": {
        "alias@example.org": ["user@example.org"],
        "team@example.org": ["user@example.org", "other@example.org"],
        "user@example.org": [],
    },
    "domain": {"example.org": True},
    # first+last@ was created in userli's admin form, which allows what registration does not
    "mailbox": {"user@example.org": True, "other@example.org": True, "first+last@example.org": True},
    # userli's senders/{address}: the logins that may send as that address (the user itself,
    # or the destinations of an alias).
    "senders": {
        "user@example.org": ["user@example.org"],
        "other@example.org": ["other@example.org"],
        "alias@example.org": ["user@example.org"],
        "team@example.org": ["user@example.org", "other@example.org"],
        "first+last@example.org": ["first+last@example.org"],
    },
    "auth": {  # passwords; userli answers 403 for users disabled by the spam role
        "user@example.org": "correct horse",
        "other@example.org": "tab\tand\\ back",
        "spammer@example.org": "pw",
        "first+last@example.org": "admin made me",
    },
    "disabled": {"spammer@example.org": True},
    # GET /api/dovecot/{email}: the userdb (scope dovecot)
    "dovecot": {
        "user@example.org": {
            "user": "user@example.org",
            "mailCrypt": 2,
            "mailCryptPublicKey": "PUBKEY",
            "quota": "1024M",
        },
        "other@example.org": {"user": "other@example.org", "mailCrypt": 0, "mailCryptPublicKey": "", "quota": ""},
    },
    "smtp_quota": {
        "user@example.org": {"per_hour": 3, "per_day": 100},
        "other@example.org": {"per_hour": 0, "per_day": 0},
    },
}
NOT_FOUND_BODY = {"alias": [], "senders": [], "domain": False, "mailbox": False}
# userli's own error bodies (userli-api.md): these are not answers about a user
INVALID_TOKEN = b'{"error":"Invalid API token"}'
MISSING_SCOPE = b'{"error":{"message":"Token does not have required scope: postfix","code":0}}'
NO_ROUTE = b'{"error":{"message":"No route found","code":404}}'


class UserliStub:
    """A userli look-alike on loopback. ``behaviour`` can override answers per test:
    a callable (map, key) -> (status, body bytes) or None for the normal data set."""

    def __init__(self, data: dict[str, dict[str, Any]] | None = None, token: str = TOKEN) -> None:
        self.data = copy.deepcopy(data if data is not None else DATA)  # tests may change it
        self.token = token
        self.scopes = {"postfix"}  # the scopes of the adapter's token
        self.version = (6, 10, 3)  # older userli lack routes: smtp_quota before 6.2.0, auth before 6.9.0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.behaviour: Callable[[str, str], tuple[int, bytes] | None] | None = None
        self.delay = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._port = 0
        self._open: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def start(self) -> UserliStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                stub._open.add(self.connection)

            def finish(self) -> None:
                stub._open.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                stub.requests.append((self.path, dict(self.headers)))
                if stub.delay:
                    time.sleep(stub.delay)
                self._send(*stub.answer(self.path, self.headers.get("Authorization", "")))

            def do_POST(self) -> None:
                stub.requests.append((self.path, dict(self.headers)))
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if stub.delay:
                    time.sleep(stub.delay)
                self._send(*stub.authenticate(self.path, self.headers.get("Authorization", ""), body))

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def restart(self) -> None:
        """Back up on the same port, after ``stop``."""
        self.start()

    def stop(self) -> None:
        """Down for real: no listener, and every kept-alive connection is cut as well."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in list(self._open):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _refused(self, authorization: str, scope: str = "postfix") -> tuple[int, bytes] | None:
        """What userli's token authenticator and scope listener answer before any controller."""
        if authorization != f"Bearer {self.token}":
            return 401, INVALID_TOKEN
        if scope not in self.scopes:
            return 403, MISSING_SCOPE.replace(b"postfix", scope.encode())
        return None

    def authenticate(self, path: str, authorization: str, body: bytes) -> tuple[int, bytes]:
        if path != "/api/postfix/auth" or self.version < (6, 9, 0):
            return 404, NO_ROUTE
        refused = self._refused(authorization)
        if refused is not None:
            return refused
        if self.behaviour is not None:
            answer = self.behaviour("auth", body.decode(errors="replace"))
            if answer is not None:
                return answer
        try:
            email, password = json.loads(body)["email"], json.loads(body)["password"]
        except (ValueError, KeyError, TypeError):
            return 422, b'{"message":"invalid request"}'
        if self.data["auth"].get(email) != password:
            return 401, b'{"message":"authentication failed"}'
        if self.data["disabled"].get(email):
            return 403, b'{"message":"user disabled due to spam role"}'
        return 200, b'{"message":"success"}'

    def answer(self, path: str, authorization: str) -> tuple[int, bytes]:
        parts = path.split("/")  # '', 'api', 'postfix', endpoint, key
        if len(parts) == 4 and parts[1:3] == ["api", "dovecot"] and parts[3]:
            return self._dovecot(unquote(parts[3]), authorization)
        endpoints = (*NOT_FOUND_BODY, "smtp_quota") if self.version >= (6, 2, 0) else tuple(NOT_FOUND_BODY)
        if len(parts) != 5 or parts[1:3] != ["api", "postfix"] or parts[3] not in endpoints or not parts[4]:
            return 404, NO_ROUTE
        refused = self._refused(authorization)
        if refused is not None:
            return refused
        endpoint, key = parts[3], unquote(parts[4])
        if self.behaviour is not None:
            answer = self.behaviour(endpoint, key)
            if answer is not None:
                return answer
        if endpoint == "smtp_quota":
            quota = self.data["smtp_quota"].get(key)
            return (200, json.dumps(quota).encode()) if quota else (404, b'{"error":"User not found"}')
        return 200, json.dumps(self.data.get(endpoint, {}).get(key, NOT_FOUND_BODY[endpoint])).encode()

    def _dovecot(self, email: str, authorization: str) -> tuple[int, bytes]:
        refused = self._refused(authorization, "dovecot")
        if refused is not None:
            return refused
        if self.behaviour is not None:
            answer = self.behaviour("dovecot", email)
            if answer is not None:
                return answer
        user = self.data["dovecot"].get(email)
        if user is None:
            return 404, b'{"message":"user not found"}'
        return 200, json.dumps({"message": "success", "body": user}).encode()


def config_for(stub_url: str, **overrides: Any) -> Config:
    base = Config(
        userli_token=TOKEN,
        userli_base_url=stub_url,
        userli_timeout=2.0,
        socketmap_address=ListenAddress(host="127.0.0.1", port=0),
        metrics_address=ListenAddress(host="127.0.0.1", port=0),
        policy_address=ListenAddress(host="127.0.0.1", port=0),
        shutdown_timeout=5.0,
    )
    return replace(base, **overrides)


class LoopThread:
    """A uvloop event loop running in a background thread; tests talk to it over sockets."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


class RunningService(LoopThread):
    """The real Service on its own loop thread."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.service: Service = self.call(self._create(config))
        try:
            self.call(self.service.start())
        except BaseException:
            self.close()
            raise

    @staticmethod
    async def _create(config: Config) -> Service:
        return Service(config)

    @property
    def socketmap_port(self) -> int:
        port = self.service.socketmap.bound.port
        assert port is not None
        return port

    @property
    def policy_port(self) -> int:
        assert self.service.policy is not None
        port = self.service.policy.bound.port
        assert port is not None
        return port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http.bound.port}"

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.call(self.service.stop())
        self.close()


StartAdapter = Callable[..., RunningService]  # the start_adapter fixture: config overrides -> service


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class PolicyClient:
    """A blocking policy delegation client, like one smtpd process: one connection, many requests."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def ask(self, **attributes: str) -> str:
        """Send one request; return the action."""
        self.sock.sendall(b"".join(f"{k}={v}\n".encode() for k, v in attributes.items()) + b"\n")
        while b"\n\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n\n")
        assert answer.startswith(b"action="), answer
        return answer.removeprefix(b"action=").decode()


def end_of_message(sender: str, **extra: str) -> dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "sender": sender, **extra}


class SocketmapClient:
    """A blocking socketmap client, like one Postfix process: one connection, many lookups."""

    def __init__(self, address: int | str, timeout: float = 10.0) -> None:
        if isinstance(address, int):
            self.sock = socket.create_connection(("127.0.0.1", address), timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        self._buffer = b""

    def __enter__(self) -> SocketmapClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def query(self, name: str, key: str) -> str:
        self.send(netstring(f"{name} {key}".encode()))
        return self.read_reply()

    def read_reply(self) -> str:
        while b":" not in self._buffer:
            self._fill()
        length_text, _, rest = self._buffer.partition(b":")
        length = int(length_text)
        while len(rest) < length + 1:
            self._fill()
            rest = self._buffer.partition(b":")[2]
        assert rest[length : length + 1] == b",", f"bad netstring terminator in {self._buffer!r}"
        self._buffer = rest[length + 1 :]
        return rest[:length].decode()

    def closed_by_server(self) -> bool:
        """True when the server closed the connection (EOF or reset) within the socket timeout."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buffer += chunk


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class RedisServer:
    """A real redis-server on a free loopback port, without persistence."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, *args, "--dir", self.workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: port_open(self.port), timeout=10)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def metric(http_url: str, series: str) -> float:
    """The value of one series on the adapter's /metrics, 0 when it is not there (yet)."""
    with urllib.request.urlopen(http_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def pipeline_without_reading(port: int, seconds: float, cpu: int | None = None) -> None:
    """A socketmap client that floods locally answered requests and never reads a reply (run it
    in a process of its own; ``cpu`` pins it, so a benchmark measures the server, not it)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    sock = socket.create_connection(("127.0.0.1", port), timeout=seconds + 5)
    payload = netstring(b"alias *") * 1000
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            sock.sendall(payload)
    except OSError:
        pass


def waits_behind_flooders(
    port: int,
    flooders: int,
    lookups: int,
    gap: float,
    flood_seconds: float,
    cpu: int | None = None,
    start_method: str = "spawn",
) -> list[float]:
    """Seconds each of ``lookups`` cached lookups waited, ``gap`` apart, while ``flooders``
    processes pipeline requests at the socketmap ``port`` without reading a reply.

    ``spawn`` is safe inside pytest; a benchmark pinning the flooders wants ``fork``, whose
    processes are on their CPU at once instead of starting an interpreter beside the server."""
    context = multiprocessing.get_context(start_method)
    processes = [
        context.Process(target=pipeline_without_reading, args=(port, flood_seconds, cpu), daemon=True)
        for _ in range(flooders)
    ]
    try:
        with SocketmapClient(port, timeout=60) as client:
            assert client.query("mailbox", "user@example.org") == "OK 1"  # cached from here on
            for process in processes:
                process.start()
            time.sleep(1.5)  # the flooders have filled their buffers
            waits = []
            for _ in range(lookups):
                started = time.monotonic()
                assert client.query("mailbox", "user@example.org") == "OK 1"
                waits.append(time.monotonic() - started)
                time.sleep(gap)
        return waits
    finally:
        for process in processes:
            process.kill()
            process.join(5)


class RecordingEnv(dict[str, str]):
    """An environment that remembers every variable the code asks for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


def variables_the_code_reads() -> set[str]:
    """Every environment variable ``Config.from_env`` asks for."""
    env = RecordingEnv({"USERLI_TOKEN": TOKEN})
    Config.from_env(env)
    return env.asked
