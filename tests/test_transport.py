"""The userli HTTP transport against scripted servers on loopback: reuse, closes, retries, limits.

Each server here is a real asyncio TCP server whose handler plays one HTTP behaviour per
connection, so every case runs over real sockets, on uvloop like the service.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trustme
import uvloop

from adapter.transport import MAX_BODY, MAX_HEAD, REST, UserliTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK_TRUE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\ntrue"


class Scripted:
    """A server that hands connection number n (from 0) to ``handler(reader, writer, n)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []  # every request head (and body) read by read_request

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, self.connections = self.connections, self.connections + 1
        try:
            await self.handler(reader, writer, number)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + (await reader.readexactly(length) if length else b"")
        self.requests.append(request)
        return request


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(scenario())


async def get(transport: UserliTransport, url: str, timeout: float = 2.0) -> httpx.Response:
    """One GET through a client on ``transport``, leaving the transport open for the next."""
    return await httpx.AsyncClient(transport=transport, timeout=timeout).get(url)


def keep_alive(answer: bytes = OK_TRUE, server: list[Scripted] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        assert server is not None
        while True:
            await server[0].read_request(reader)
            writer.write(answer)
            await writer.drain()

    return handler


async def rested() -> None:
    """Let a used connection rest, so that the next request may reuse it."""
    await asyncio.sleep(REST + 0.005)


def serving(answer: bytes = OK_TRUE) -> Scripted:
    box: list[Scripted] = []
    scripted = Scripted(keep_alive(answer, box))
    box.append(scripted)
    return scripted


def test_connections_are_kept_alive_and_requests_are_well_formed() -> None:
    async def scenario() -> None:
        async with serving() as server:
            transport = UserliTransport(max_idle=4)
            client = httpx.AsyncClient(transport=transport, base_url=server.url, headers={"Authorization": "Bearer t"})
            for _ in range(5):
                response = await client.get("/api/postfix/mailbox/a%40b.example")
                assert (response.status_code, response.json()) == (200, True)
                await rested()
            await client.aclose()
            assert server.connections == 1
            head = server.requests[0].decode()
            assert head.startswith("GET /api/postfix/mailbox/a%40b.example HTTP/1.1\r\n")
            assert f"Host: {server.url.removeprefix('http://')}\r\n" in head
            assert "Authorization: Bearer t\r\n" in head


def test_a_used_connection_rests_before_it_is_reused() -> None:
    """A stray answer sent just after the real one must reach an idle connection (which it closes),
    not a reused one (where it would pass for the next answer)."""

    async def scenario() -> None:
        async with serving() as server:
            client = httpx.AsyncClient(transport=UserliTransport(max_idle=4), base_url=server.url)
            for _ in range(3):  # back to back: each finds the others resting
                assert (await client.get("/")).status_code == 200
            assert server.connections == 3
            await rested()
            assert (await client.get("/")).status_code == 200
            assert server.connections == 3
            await client.aclose()

    run(scenario)

    run(scenario)


def test_a_post_sends_its_json_body() -> None:
    async def scenario() -> None:
        async with serving() as server, httpx.AsyncClient(transport=UserliTransport(max_idle=1)) as client:
            response = await client.post(f"{server.url}/api/postfix/auth", json={"email": "a@b", "password": "p"})
            assert response.status_code == 200
            assert server.requests[0].endswith(b'\r\n\r\n{"email":"a@b","password":"p"}')
            assert b"Content-Length: 30\r\n" in server.requests[0]

    run(scenario)


def chunked(body: bytes, headers: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + headers
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]))
        + b"0\r\n\r\n"
    )


def test_chunked_bodies_are_whole() -> None:
    async def scenario() -> None:
        async with serving(chunked(b'["x@example.org"]')) as server:
            async with httpx.AsyncClient(transport=UserliTransport(max_idle=1)) as client:
                assert (await client.get(server.url)).json() == ["x@example.org"]
                await rested()
                assert (await client.get(server.url)).json() == ["x@example.org"]
            assert server.connections == 1  # a chunked response ends cleanly: the connection is reused

    run(scenario)


@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"gzip, gzip", b"br", b"x-anything"])
def test_encoded_bodies_are_refused_never_decoded(coding: bytes) -> None:
    """A decompression bomb (3 kB of gzip, 2 GB decoded) must never be decoded: only identity."""
    bomb = gzip.compress(b" " * 1_000_000)

    async def scenario() -> None:
        async with serving(chunked(bomb, b"Content-Encoding: " + coding + b"\r\n")) as server:
            transport = UserliTransport(max_idle=1)
            with pytest.raises(httpx.RemoteProtocolError, match="encoded"):
                await get(transport, server.url)
            assert server.connections == 1

    run(scenario)


def test_identity_encoding_is_fine() -> None:
    answer = OK_TRUE.replace(b"\r\n\r\n", b"\r\nContent-Encoding: identity\r\n\r\n")

    async def scenario() -> None:
        async with serving(answer) as server:
            assert (await get(UserliTransport(max_idle=1), server.url)).json() is True

    run(scenario)


def test_a_body_delimited_by_the_close_is_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n["a@b"]')
        await writer.drain()

    async def scenario() -> None:
        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=1)
            assert (await get(transport, server.url)).json() == ["a@b"]
            assert (await get(transport, server.url)).json() == ["a@b"]
            assert server.connections == 2

    run(scenario)


def test_connection_close_and_idle_closes_by_the_server_are_followed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if n == 0:
            writer.write(OK_TRUE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        else:
            writer.write(OK_TRUE)  # then the server drops the kept-alive connection while idle
        await writer.drain()

    async def scenario() -> None:
        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=2)
            for expected_connections in (1, 2, 3):
                assert (await get(transport, server.url)).status_code == 200
                assert server.connections == expected_connections
                await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle

    run(scenario)


@pytest.mark.parametrize(("method", "outcome"), [("GET", 200), ("POST", httpx.RemoteProtocolError)])
def test_a_kept_alive_connection_lost_before_any_answer(method: str, outcome: object) -> None:
    # The server reads the second request on the reused connection, then closes without a word:
    # the request may be sent again on a new connection only when it changes nothing.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(OK_TRUE)
        await writer.drain()
        if n == 0:
            await server.read_request(reader)  # and close
            return
        while True:
            await server.read_request(reader)
            writer.write(OK_TRUE)

    server = Scripted(handler)

    async def scenario() -> None:
        async with server, httpx.AsyncClient(transport=UserliTransport(max_idle=1)) as client:
            assert (await client.request(method, server.url)).status_code == 200
            await rested()
            if outcome == 200:
                assert (await client.request(method, server.url)).status_code == 200
                assert server.connections == 2
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.request(method, server.url)
                assert server.connections == 1

    run(scenario)


def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async def scenario() -> None:
        async with Scripted(handler) as server:
            with pytest.raises(httpx.RemoteProtocolError):
                await get(UserliTransport(max_idle=1), server.url)
            assert server.connections == 1

    run(scenario)


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\ntrue",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1),
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"y" * 100_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n" + b"X-Many: y\r\n" * 7000 + b"\r\ntrue",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + OK_TRUE,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\ntrue\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\ntrue",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ntrue\r\n0\r\n\r\n",
    ],
    ids=[
        "not-http",
        "two-lengths",
        "body-too-large",
        "head-too-large",
        "head-too-large-in-one-read",
        "upgrade",
        "informational-storm",
        "bad-chunk-size",
        "negative-length",
        "length-and-chunked",
    ],
)
def test_broken_or_oversized_answers_are_protocol_errors(answer: bytes) -> None:
    async def scenario() -> None:
        async with serving(answer) as server:
            transport = UserliTransport(max_idle=1)
            for _ in range(2):  # the broken connection is not reused
                with pytest.raises(httpx.RemoteProtocolError):
                    await get(transport, server.url)
            assert server.connections == 2

    run(scenario)


def test_a_large_answer_is_not_taken_for_a_large_head() -> None:
    """The head limit counts head bytes only: a 900 kB body in the first read is a body."""
    destinations = b'["' + b'","'.join(b"destination%06d@example.org" % i for i in range(30_000)) + b'"]'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(destinations), destinations)
    assert len(destinations) > MAX_HEAD * 10

    async def scenario() -> None:
        async with serving(answer) as server:
            transport = UserliTransport(max_idle=1)
            for _ in range(20):
                assert len((await get(transport, server.url)).json()) == 30_000
                await rested()

    run(scenario)


def test_informational_answers_are_skipped() -> None:
    async def scenario() -> None:
        async with serving(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_TRUE) as server:
            assert (await get(UserliTransport(max_idle=1), server.url)).json() is True

    run(scenario)


def test_a_silent_server_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await asyncio.sleep(5)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await get(UserliTransport(max_idle=1), server.url, timeout=0.2)
            assert time.monotonic() - started < 1.0

    run(scenario)


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with serving() as server:
            url = server.url
        server.server.close()
        await server.server.wait_closed()
        with pytest.raises(httpx.ConnectError):
            await get(UserliTransport(max_idle=1), url)

    run(scenario)


def test_idle_connections_are_bounded_and_expire() -> None:
    async def scenario() -> None:
        async with serving() as server:
            transport = UserliTransport(max_idle=3, keepalive_expiry=0.2)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
                await asyncio.gather(*(client.get("/") for _ in range(10)))
                assert server.connections == 10
                await rested()
                await asyncio.gather(*(client.get("/") for _ in range(3)))
                assert server.connections == 10  # three were kept
                await rested()
                await asyncio.gather(*(client.get("/") for _ in range(4)))
                assert server.connections == 11
                await asyncio.sleep(0.3)
                await client.get("/")
                assert server.connections == 12  # the kept ones had expired

    run(scenario)


NOT_TRUE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nfalse"


def test_a_second_response_in_the_same_read_fails_the_request() -> None:
    """Which of two responses is the answer? Neither can be trusted: TEMP, and a new connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write((NOT_TRUE + OK_TRUE) if n == 0 else OK_TRUE)
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=1)
            with pytest.raises(httpx.RemoteProtocolError, match="more than one"):
                await get(transport, server.url)
            assert (await get(transport, server.url)).json() is True
            assert server.connections == 2

    run(scenario)


def test_a_stray_while_idle_drops_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK_TRUE)
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(NOT_TRUE)  # unrequested, shortly after the answer

    async def scenario() -> None:
        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=1)
            for _ in range(5):  # as fast as a busy adapter: every answer must still be the right one
                assert (await get(transport, server.url)).json() is True
            assert server.connections == 5

    run(scenario)


def test_a_server_that_speaks_before_it_is_asked_is_not_believed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(NOT_TRUE)  # on connect, before any request
        await writer.drain()
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK_TRUE)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=1)
            for _ in range(5):
                with pytest.raises(httpx.RemoteProtocolError):
                    await get(transport, server.url)

    run(scenario)


@pytest.mark.parametrize("expiry", [0.0])
def test_without_keep_alive_every_request_has_its_own_connection(expiry: float) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK_TRUE)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(NOT_TRUE)  # a stray, long after: it can never meet another request

    async def scenario() -> None:
        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=8, keepalive_expiry=expiry)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
                for _ in range(3):
                    assert [r.json() for r in await asyncio.gather(*(client.get("/") for _ in range(4)))] == [True] * 4
                    await asyncio.sleep(0.06)
            assert server.connections == 12

    run(scenario)


def test_a_header_with_a_line_break_is_never_sent() -> None:
    async def scenario() -> None:
        async with serving() as server:
            transport = UserliTransport(max_idle=1)
            with pytest.raises(httpx.LocalProtocolError):
                await transport.handle_async_request(
                    httpx.Request("GET", server.url, headers={"X-Key": "a\r\nX-Injected: 1"})
                )
            assert server.requests == []

    run(scenario)


def test_aclose_closes_every_connection() -> None:
    closed = asyncio.Event

    async def scenario() -> None:
        ended = closed()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK_TRUE)
            await writer.drain()
            assert await reader.read() == b""  # until the client closes
            ended.set()

        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=1)
            await transport.handle_async_request(httpx.Request("GET", server.url))
            await transport.aclose()
            await asyncio.wait_for(ended.wait(), 2)

    run(scenario)


def test_https_with_the_system_or_a_given_trust_store() -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK_TRUE)
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(handler, "localhost", 0, ssl=server_context)
        url = f"https://localhost:{server.sockets[0].getsockname()[1]}/"
        try:
            assert (await get(UserliTransport(max_idle=1, ssl_context=client_context), url)).json() is True
            with pytest.raises(httpx.ConnectError) as refused:  # a private CA is not in the default trust store
                await get(UserliTransport(max_idle=1), url)
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)  # the reason, for the log
        finally:
            server.close()

    run(scenario)


def test_one_stale_connection_retires_the_other_idle_ones() -> None:
    # userli restarted: every kept-alive connection is dead. The first failure closes them all,
    # so the GET is sent again at once on a new connection, not once per stale one.
    stale_requests: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK_TRUE)
        await writer.drain()
        if n < 3:
            await reader.readuntil(b"\r\n\r\n")
            stale_requests.append(n)
            return  # closed without an answer
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK_TRUE)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            transport = UserliTransport(max_idle=3)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
                await asyncio.gather(*(client.get("/") for _ in range(3)))
                assert server.connections == 3
                await rested()
                assert (await client.get("/")).status_code == 200
                await rested()
                assert (await client.get("/")).status_code == 200
            assert len(stale_requests) == 1
            assert server.connections == 4

    run(scenario)


def test_only_get_and_post_are_spoken() -> None:
    async def scenario() -> None:
        async with serving() as server:
            with pytest.raises(httpx.LocalProtocolError):
                await UserliTransport(max_idle=1).handle_async_request(httpx.Request("HEAD", server.url))
            assert server.requests == []

    run(scenario)
