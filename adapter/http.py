"""The side HTTP server for /metrics, /health and /ready.

HTTP parsing is h11's (the sans-I/O HTTP/1.1 library httpx itself is built on); this module only
moves bytes between a socket and h11 and calls a route. It serves probes and scrapes, not the
public: small, with keep-alive and GET/HEAD only.

It must not be possible to starve it: a liveness probe that cannot get in restarts the pod. Each
request must arrive whole within ``REQUEST_TIMEOUT`` of the connection or of the previous
answer (a byte every few seconds does not keep a connection), and when every slot is taken, the
connection that has waited longest without a request being answered gives its slot to the new
one, so a probe always gets in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import h11

from adapter.config import ListenAddress
from adapter.server import bound_address

__all__ = ["Headers", "HttpServer", "Response", "Route", "json_response"]

log = logging.getLogger("adapter.http")

REQUEST_TIMEOUT = 10.0  # a whole request, from the connection or the previous answer
MAX_CONNECTIONS = 256  # probes and scrapers, not mail traffic


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, content_type: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status, self.content_type, self.body, self.headers = status, content_type, body, headers


Headers = dict[bytes, bytes]  # the request's headers, names in lower case (the last of repeated ones)
Route = Callable[[Headers], Awaitable[Response]]


def json_response(status: int, payload: dict[str, str]) -> Response:
    return Response(status, "application/json", json.dumps(payload).encode())


class HttpServer:
    def __init__(self, address: ListenAddress, routes: dict[str, Route]) -> None:
        self.address = address
        self._routes = routes
        self._server: asyncio.Server | None = None
        self._bound: ListenAddress | None = None
        # Connection tasks in the order they last started waiting for a request; the value says
        # whether a request is being answered (such a connection is never evicted).
        self._tasks: dict[asyncio.Task[None], bool] = {}

    @property
    def bound(self) -> ListenAddress:
        """The address actually bound (the real port when the configured port was 0)."""
        assert self._bound is not None, "not started"
        return self._bound

    async def start(self) -> None:
        if self.address.path is not None:
            self._server = await asyncio.start_unix_server(self._serve, self.address.path)
        else:
            self._server = await asyncio.start_server(self._serve, self.address.host, self.address.port)
        self._bound = bound_address(self._server.sockets, self.address)
        log.info("listening", extra={"listener": "http", "addr": str(self._bound)})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            self._evict_one()
        self._tasks[task] = False
        try:
            await self._exchange(task, h11.Connection(h11.SERVER), reader, writer)
        except (TimeoutError, ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _evict_one(self) -> None:
        """Close the connection that has waited longest for its next request."""
        oldest = next((task for task, answering in self._tasks.items() if not answering), None)
        if oldest is not None:
            del self._tasks[oldest]
            oldest.cancel()

    async def _exchange(
        self, task: asyncio.Task[None], conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout_at(deadline):
                    conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Request):
                self._tasks[task] = True
                response = await self._route(event)
                writer.write(_render(conn, event.method, response))
                await writer.drain()
                continue
            if isinstance(event, h11.ConnectionClosed) or conn.our_state is h11.MUST_CLOSE:
                return
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                if task in self._tasks:  # waiting again: to the end of the eviction order
                    del self._tasks[task]
                    self._tasks[task] = False
                deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT

    async def _route(self, request: h11.Request) -> Response:
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        route = self._routes.get(path)
        if route is None:
            return json_response(404, {"error": "not found"})
        if request.method not in (b"GET", b"HEAD"):
            return json_response(405, {"error": "method not allowed"})
        try:
            return await route({name: value for name, value in request.headers})
        except Exception:
            log.exception("route failed", extra={"path": path})
            return json_response(500, {"error": "internal error"})


def _render(conn: h11.Connection, method: bytes, response: Response) -> bytes:
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))), *response.headers]
    out = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
    if method != b"HEAD":
        out += conn.send(h11.Data(data=response.body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")
