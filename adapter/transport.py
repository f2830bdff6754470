"""An httpx transport for the userli API: HTTP/1.1 keep-alive connections that cost nothing to keep.

httpx's default transport (httpcore) re-checks its whole pool before every request and after
every response, polling the socket of each idle connection: about 1.4 ms of CPU per lookup
against the bench stand-in, where this transport needs under 0.4 (bench/README). Here each
connection is an asyncio Protocol: the event loop tells it when the server closes it, nothing is
polled, and taking an idle connection is a list pop. httptools parses the responses; httpx's
client API on top (base URL, headers, timeouts, content decoding) is unchanged, and unit tests
keep mocking userli with pytest-httpx on httpx's own transport.

Deliberately small: plain or TLS HTTP/1.1, whole bodies up to ``MAX_BODY`` (userli answers are
small JSON), no proxies, no HTTP/2, no content codings (the client asks for ``identity``; an
encoded answer is refused, so no decompression bomb can grow in memory). The caller bounds
concurrency (``UserliClient`` lets ``MAX_IN_FLIGHT`` requests run at once); between requests at
most ``max_idle`` connections per origin stay open, each for at most ``keepalive_expiry``
seconds (0: a fresh connection for every request).

No answer may belong to another request. HTTP/1.1 has no request ids: a response is the answer
to the request before it only because of its place in the stream. So a response is accepted
only when the read that completes it holds nothing more; bytes that arrive while no request is
outstanding, before the request was written, or after the answer in the same read, close the
connection and fail that request (TEMP for Postfix). A used connection rests ``REST`` before it
is reused and a new one waits ``SETTLE`` before its first request, so that strays sent just after
an answer, and servers that speak unasked, are seen on a connection nobody is waiting on. What
remains: a server (or a broken proxy) that sends an unrequested response later than that, after
a kept-alive connection was reused, cannot be told from the real answer;
``keepalive_expiry=0`` (``USERLI_KEEPALIVE=0``) rules that out too, at the cost measured in
bench/README.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
import httpx

__all__ = ["MAX_BODY", "UserliTransport"]

MAX_BODY = 1 << 20  # bytes; Postfix takes at most 100 kB of reply anyway
MAX_HEAD = 64 << 10  # bytes of status line and headers
MAX_INFORMATIONAL = 10  # 1xx answers before the real one; more is a storm, not HTTP
# Idle connections are given up before the shortest common server keep-alive timeout (Apache's
# 5 s), so a request rarely meets a connection the server is closing at that very moment.
KEEPALIVE_EXPIRY = 4.0
# A stray response sent right after an answer (a broken proxy's duplicate) reaches an idle
# connection within a moment, where it closes the connection; one that arrives after the
# connection was reused would be taken for the next answer. So a used connection rests this long
# before it is reused, and a new one waits this long before its first request (a server that
# speaks before it is asked is then caught). Their cost: bench/README ("Answers that belong to
# another request").
REST = 0.02
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux
SETTLE = 0.002
METHODS = frozenset({"GET", "POST"})  # what userli's API needs; a HEAD answer would carry no body

Origin = tuple[str, str, int]
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")  # visible ASCII only: no space, no line break
_UNSAFE_VALUE = re.compile(rb"[\x00\r\n]")


class _Disconnected(Exception):
    """The connection ended before a whole response arrived."""

    def __init__(self, answered: bool) -> None:
        super().__init__("server disconnected before a whole response")
        self.answered = answered  # some of a response had arrived: the request reached the server


@dataclass(slots=True)
class _Response:
    status: int = 0
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes of body so far
    head_size: int = 0  # bytes of status line and headers so far
    head_done: bool = False
    framed: bool = False  # Content-Length or Transfer-Encoding: the body does not end at the close
    encoded: bool = False  # a Content-Encoding other than identity


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, the response collected whole.

    httptools (llhttp, the Node.js parser; by the uvloop authors) reads the responses: 1 us per
    response where h11 took 73 per request and response (bench/README). Requests are simple enough to write directly.
    """

    def __init__(self, on_lost: Callable[[_Connection], None]) -> None:
        self._on_lost = on_lost
        # The parser holds this connection's callbacks, a reference cycle: it lives only while
        # the connection does (connection_made to connection_lost), so that a connection, and a
        # refused one above all, is freed by reference counting, not by the cyclic collector.
        self._parser: httptools.HttpResponseParser | None = None
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[_Response] | None = None
        self._response = _Response()
        self._answered = False
        self._reusable = False
        self._done = False  # the current request's final response is complete
        self._keep_alive = False
        self._extra = False  # a response began after the answer: no way to know which is which
        self._informational = 0
        self._socket: socket.socket | None = None
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._parser = httptools.HttpResponseParser(self)
        sock = transport.get_extra_info("socket")
        self._socket = sock if QUICKACK is not None and sock is not None and sock.family != socket.AF_UNIX else None

    def data_received(self, data: bytes) -> None:
        if self._socket is not None:
            # Acknowledge at once. A server with Nagle's algorithm on holds a small write made
            # just after an answer until that answer is acknowledged; with the kernel's delayed
            # ACK (40 ms or more) that happens only with our next request, so a stray was
            # released exactly where the next answer belongs. Acknowledged now, it arrives while
            # the connection rests, where it closes the connection.
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        transport = self._transport
        if self._waiter is None or self._waiter.done() or (transport is not None and transport.get_write_buffer_size()):
            # Bytes nobody asked for (yet): whatever they are, this stream cannot be trusted.
            self._fail(httpx.RemoteProtocolError("userli sent data before it was asked"))
            self.close()
            return
        parser = self._parser
        if parser is None:  # nothing arrives after connection_lost; the check is for the type
            return
        self._answered = True
        head_was_done = self._response.head_done
        try:
            parser.feed_data(data)
        except Exception as exc:  # HttpParserError, HttpParserUpgrade (101), anything llhttp raises
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response ({exc.__class__.__name__})"))
            return
        response = self._response
        if not response.head_done and not head_was_done:
            response.head_size += len(data)  # an incomplete head: every byte of the read is head
        if self._extra:
            self._fail(httpx.RemoteProtocolError("userli sent more than one response to one request"))
        elif self._informational > MAX_INFORMATIONAL:
            self._fail(httpx.RemoteProtocolError("userli sent too many informational responses"))
        elif response.head_size > MAX_HEAD:
            self._fail(httpx.RemoteProtocolError(f"response head over {MAX_HEAD} bytes"))
        elif response.encoded:
            self._fail(httpx.RemoteProtocolError("userli sent an encoded body; only identity is accepted"))
        elif response.size > MAX_BODY:
            self._fail(httpx.RemoteProtocolError(f"response body over {MAX_BODY} bytes"))
        elif self._done:  # only now: the whole read is parsed and held nothing after the answer
            self._complete(self._keep_alive)

    def eof_received(self) -> bool:
        response = self._response
        if response.head_done and not response.framed:  # the close ends the body
            self._complete(keep_alive=False)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Disconnected(self._answered))
        self._on_lost(self)
        self._parser = None

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._done:
            self._extra = True  # a second response to one request
        self._response = _Response()

    def on_status(self, reason: bytes) -> None:
        self._response.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        response.headers.append((name, value))
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            response.framed = True
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            response.encoded = True

    def on_headers_complete(self) -> None:
        response = self._response
        response.head_done = True
        response.status = self._parser.get_status_code() if self._parser is not None else 0
        # The head counted as head, whatever else the read held: "HTTP/1.1 200 " + reason,
        # "name: value" lines and the blank line.
        response.head_size = 15 + len(response.reason) + sum(len(n) + len(v) + 4 for n, v in response.headers)

    def on_body(self, body: bytes) -> None:
        self._response.size += len(body)
        self._response.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._response.status < 200:  # informational: the real answer follows
            self._informational += 1
            return
        self._done, self._keep_alive = True, self._parser is not None and self._parser.should_keep_alive()

    # the connection's user

    def close(self) -> None:
        if not self.closed and self._transport is not None:
            self.closed = True
            self._transport.close()

    def reusable(self) -> bool:
        return self._reusable and not self.closed

    async def exchange(self, request: bytes, read_timeout: float | None) -> _Response:
        assert self._transport is not None
        if self.closed:  # lost (or closed for speaking unasked) before the request went out
            raise _Disconnected(answered=False)
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self._response, self._answered, self._reusable = _Response(), False, False
        self._done = self._extra = False
        self._informational = 0
        self._transport.write(request)
        try:
            async with asyncio.timeout(read_timeout):
                return await waiter
        except TimeoutError:
            raise httpx.ReadTimeout("userli did not answer in time") from None
        finally:
            # A failed waiter holds its exception, whose traceback holds this frame: without
            # the local cleared, that is a cycle only the cyclic collector frees.
            self._waiter = waiter = None

    def _complete(self, keep_alive: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._reusable = keep_alive
            self._waiter.set_result(self._response)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if not isinstance(exc, _Disconnected):
            self.close()  # the stream is out of step: nothing more can be read from it


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    """The request head and body; refuses what could split into two requests on the wire."""
    if request.method not in METHODS:
        raise httpx.LocalProtocolError(f"method {request.method} is not supported")
    method, target = request.method.encode("ascii"), request.url.raw_path
    if not _TARGET.fullmatch(target):
        raise httpx.LocalProtocolError("invalid request target")
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
            raise httpx.LocalProtocolError(f"invalid header {name!r}")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines) + body


class UserliTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        max_idle: int,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
        rest: float = REST,
        settle: float = SETTLE,
    ) -> None:
        self._max_idle = max_idle if keepalive_expiry > 0 else 0
        self._expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._rest = rest
        self._settle = settle
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self.opened = 0  # connections made so far (bench/transports.py reports it)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        wire = _serialize(request, await request.aread())
        while True:
            connection = self._take_idle(origin)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(origin, timeouts.get("connect"))
            self._busy.add(connection)
            try:
                response = await connection.exchange(wire, timeouts.get("read"))
            except _Disconnected as exc:
                # A kept-alive connection the server closed just as we sent: the others kept as
                # long are suspect too (userli restarted?). Safe to send again on a new one when
                # nothing came back and the request changes nothing.
                if reused and not exc.answered:
                    self._drop_idle(origin)
                    if request.method == "GET":
                        continue
                raise httpx.RemoteProtocolError("userli closed the connection without an answer") from None
            except BaseException:  # timeout, cancellation, broken response: the stream is lost
                connection.close()
                raise
            finally:
                self._busy.discard(connection)
            self._release(origin, connection)
            return httpx.Response(
                response.status,
                headers=response.headers,
                stream=httpx.ByteStream(b"".join(response.body)),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
            )

    async def aclose(self) -> None:
        for origin in list(self._idle):
            self._drop_idle(origin)
        for connection in self._busy:
            connection.close()

    def _drop_idle(self, origin: Origin) -> None:
        for connection in self._idle.pop(origin, ()):
            connection.close()

    def _take_idle(self, origin: Origin) -> _Connection | None:
        """The most recently used connection that has rested (least likely to be timed out by
        the server), or None. Idle connections are in release order, oldest first."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        if now - idle[-1].idle_since >= self._expiry:  # the newest has expired: so have all the others
            self._drop_idle(origin)
            return None
        for index in range(len(idle) - 1, -1, -1):
            connection = idle[index]
            if now - connection.idle_since >= self._rest and not connection.closed:
                del idle[index]
                return connection
        return None

    def _release(self, origin: Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if not connection.reusable() or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        idle.append(connection)

    def _forget(self, origin: Origin) -> Callable[[_Connection], None]:
        def lost(connection: _Connection) -> None:
            idle = self._idle.get(origin)
            if idle and connection in idle:
                idle.remove(connection)

        return lost

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._ssl_context is None:  # httpx's own trust store (certifi), built once: loading it takes ms
                self._ssl_context = httpx.create_ssl_context(trust_env=False)
            tls = self._ssl_context
        loop = asyncio.get_running_loop()
        self.opened += 1
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._forget(origin)),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("userli did not accept the connection in time") from None
        except OSError as exc:  # refused, unreachable, or a TLS failure (ssl.SSLError)
            raise httpx.ConnectError(f"cannot connect to userli: {exc.__class__.__name__}") from exc
        if self._settle:
            await asyncio.sleep(self._settle)  # a server that speaks unasked is caught meanwhile
        return connection
