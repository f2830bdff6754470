"""One listener core for every wire protocol: TCP or UNIX socket, a bounded connection pool,
idle and stall timeouts, in-order replies, back-pressure, and a graceful drain.

A protocol plugs in as a ``Session`` (one per connection): it turns received bytes into
requests and answers each request with reply bytes. The core owns everything else, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from adapter.config import ListenAddress

__all__ = ["Limits", "Listener", "ListenerHooks", "Session"]

log = logging.getLogger("adapter.server")
READ_SIZE = 8192  # bytes per read: a netstring request is a few hundred at most
BATCH = 16  # requests answered in one go before other connections get their turn
WRITE_SIZE = 65536  # bytes of replies written at once (the transport's default high-water mark)
FRAMING_LOG_INTERVAL = 60.0  # seconds between two "broken framing" log lines of one listener

# A request must arrive completely within this long of its first byte (slow-loris guard), and a
# client that stops reading our replies is dropped after this long.
STALL_TIMEOUT = 10.0
# Pipelined requests buffered per connection before we stop reading from it.
MAX_QUEUED = 64
BACKLOG = 1024  # connections the kernel queues for us: all Postfix processes may connect at once
ACCEPT_BATCH = 256  # connections accepted per wake-up of the listening socket
ACCEPT_BACKOFF = 1.0  # seconds without accepting after running out of file descriptors


class Session(Protocol):
    """Per-connection protocol state. ``receive`` raises ``ValueError`` on broken framing."""

    greeting: bytes  # sent as soon as the client connects (b"" for none)
    close_when_busy: bool  # over the connection limit: close at once instead of answering busy()

    @property
    def pending(self) -> bool: ...  # part of a request is buffered

    def receive(self, data: bytes) -> list[Any]: ...

    async def respond(self, request: Any) -> bytes | None: ...  # None: answer by resetting the connection

    def answer_now(self, request: Any) -> bytes | None: ...  # a reply needing no I/O (cache hit), or None

    def busy(self, request: Any) -> bytes: ...  # the answer when the pool is full


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    idle_timeout: float
    stall_timeout: float = STALL_TIMEOUT
    max_queued: int = MAX_QUEUED


@dataclass(frozen=True, slots=True)
class ListenerHooks:
    """Where the core reports what it counts (metrics live elsewhere)."""

    connections_changed: Callable[[int], None] = lambda count: None
    pool_full: Callable[[], None] = lambda: None
    framing_error: Callable[[], None] = lambda: None


class Listener:
    def __init__(
        self,
        name: str,
        address: ListenAddress,
        session_factory: Callable[[], Session],
        limits: Limits,
        hooks: ListenerHooks = ListenerHooks(),
        socket_mode: int = 0o666,
        socket_owner: int | None = None,
        socket_group: int | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self._session_factory = session_factory
        self.limits = limits
        self.hooks = hooks
        self._socket_mode = socket_mode
        self._socket_owner = socket_owner
        self._socket_group = socket_group
        self._sockets: list[socket.socket] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._bound: ListenAddress | None = None
        self._active: set[_Connection] = set()
        self._over_limit: set[_Connection] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self.draining = False
        self._framing_logged_at = -FRAMING_LOG_INTERVAL
        self._framing_not_logged = 0

    @property
    def connection_count(self) -> int:
        return len(self._active)

    @property
    def bound(self) -> ListenAddress:
        """The address actually bound (the real port when the configured port was 0)."""
        assert self._bound is not None, "not started"
        return self._bound

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.address.path is not None:
            _remove_stale_socket(self.address.path)
        self._sockets = _listening_sockets(self.address)  # at start-up only: a blocking lookup is fine
        if self.address.path is not None:
            os.chmod(self.address.path, self._socket_mode)
            if self._socket_owner is not None or self._socket_group is not None:
                owner, group = self._socket_owner, self._socket_group
                os.chown(self.address.path, -1 if owner is None else owner, -1 if group is None else group)
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._bound = bound_address(self._sockets, self.address)
        log.info("listening", extra={"listener": self.name, "addr": str(self._bound)})

    def _accept(self, sock: socket.socket) -> None:
        """Accept every waiting connection, up to a batch per wake-up.

        Not the event loop's own server: libuv (under uvloop) accepts one connection per loop
        iteration, so when the loop is busy a burst of connections (every Postfix process
        reconnecting after a restart) trickles in over seconds: 200 took 1.1 s at full load,
        where this takes milliseconds (bench/README).
        """
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors or memory: back off, like asyncio
                log.warning("cannot accept connections", extra={"listener": self.name, "error": str(exc)})
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_BACKOFF, self._resume_accepting, sock)
                return
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._connect(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if not self.draining and sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _Connection(self), conn)
        except OSError:
            conn.close()  # the client left before we got to it

    def _stop_accepting(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
                sock.close()

    async def close(self, grace: float) -> None:
        """Stop accepting, answer what was already received (up to ``grace`` seconds), close."""
        self.draining = True
        self._stop_accepting()
        for connection in [*self._active, *self._over_limit]:
            connection.drain()
        try:
            await asyncio.wait_for(self._all_closed.wait(), grace)
        except TimeoutError:
            log.warning("drain timed out; closing connections", extra={"listener": self.name})
            for connection in [*self._active, *self._over_limit]:
                connection.abort()
        if self.address.path is not None and self._bound is not None:  # only a socket we created
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)

    def framing_error(self, error: str) -> None:
        """Count a connection closed for broken framing; log at most one line a minute, with
        how many were closed since the last one (a flood of garbage is one line, not thousands)."""
        self.hooks.framing_error()
        now = asyncio.get_running_loop().time()
        if now - self._framing_logged_at < FRAMING_LOG_INTERVAL:
            self._framing_not_logged += 1
            return
        extra: dict[str, object] = {"listener": self.name, "error": error}
        if self._framing_not_logged:
            extra["closed_since_last_line"] = self._framing_not_logged
        log.warning("broken framing; closing connection", extra=extra)
        self._framing_logged_at, self._framing_not_logged = now, 0

    def _admit(self, connection: _Connection) -> bool | None:
        """True: in the pool. False: over the limit, answer busy. None: drop at once."""
        if len(self._active) < self.limits.max_connections and not self.draining:
            self._active.add(connection)
            self._all_closed.clear()
            self.hooks.connections_changed(len(self._active))
            return True
        if len(self._over_limit) < self.limits.max_connections:
            self._over_limit.add(connection)
            self._all_closed.clear()
            self.hooks.pool_full()
            return False
        return None

    def _release(self, connection: _Connection) -> None:
        if connection in self._active:
            self._active.discard(connection)
            self.hooks.connections_changed(len(self._active))
        self._over_limit.discard(connection)
        if not self._active and not self._over_limit:
            self._all_closed.set()


class _Connection(asyncio.BufferedProtocol):
    """One client connection: requests are answered one at a time, in the order received."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._limits = listener.limits
        self._loop = asyncio.get_running_loop()
        self._session = listener._session_factory()
        self._queue: deque[Any] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._in_pool = True
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._last_activity = self._loop.time()
        self._partial_since: float | None = None
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._read_buffer = bytearray(READ_SIZE)

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._transport = transport
        admitted = self._listener._admit(self)
        if admitted is None:
            transport.abort()
            return
        self._in_pool = admitted
        if not admitted and self._session.close_when_busy:
            transport.abort()
            return
        if admitted and self._session.greeting:
            transport.write(self._session.greeting)
        timeout = self._limits.idle_timeout if admitted else self._limits.stall_timeout
        self._timer = self._loop.call_at(self._last_activity + timeout, self._check_timeout)

    # Fairness: one connection gets a bounded slice of the loop per turn, whatever it sends.
    # Reads are READ_SIZE bytes (a 256 kB read of tiny requests took 19 ms just to decode), at
    # most BATCH requests are answered at once with one write, and the worker yields after each
    # BATCH; a client pipelining without reading then delays the others by about a millisecond.

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        now = self._last_activity = self._loop.time()
        transport = self._transport
        assert transport is not None
        try:
            requests = self._session.receive(data)
        except ValueError as exc:
            self._listener.framing_error(str(exc))
            self._queue.clear()
            transport.close()
            return
        if self._session.pending:
            if self._partial_since is None:
                self._partial_since = now
                self._arm(now + self._limits.stall_timeout)
        else:
            self._partial_since = None
        if not requests:
            return
        if not self._in_pool:
            transport.write(self._session.busy(requests[0]))
            transport.close()
            return
        if self._worker is None and self._drain_waiter is None:
            # Fast path: answer at once what needs no I/O, without a task per request. Stops at
            # the first request that must wait, so replies keep the order of the requests, and
            # when the client stops keeping up (pause_writing): the worker then waits for a drain.
            replies, size = [], 0
            for request in requests[:BATCH]:
                reply = self._session.answer_now(request)
                if reply is None:
                    break
                replies.append(reply)
                size += len(reply)
                if size >= WRITE_SIZE:  # enough for one write; the rest waits to see if the client reads
                    break
            if replies:
                transport.write(replies[0] if len(replies) == 1 else b"".join(replies))
            if len(replies) == len(requests):
                return
            requests = requests[len(replies) :]
        self._queue.extend(requests)
        if len(self._queue) >= self._limits.max_queued and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._work())

    def eof_received(self) -> bool:
        # The client half-closed: answer what it already sent, then close (True keeps writing open).
        self._eof = True
        return self._worker is not None

    def pause_writing(self) -> None:
        self._drain_waiter = self._loop.create_future()
        self._last_activity = self._loop.time()
        self._arm(self._last_activity + self._limits.stall_timeout)

    def resume_writing(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._worker is not None:
            self._worker.cancel()  # the client is gone: nobody waits for the answer
        self.resume_writing()
        self._listener._release(self)

    # --- the ordered worker --------------------------------------------------------------------

    async def _work(self) -> None:
        transport = self._transport
        assert transport is not None
        answered = 0
        try:
            while self._queue and not transport.is_closing():
                answered += 1
                if answered % BATCH == 0:
                    await asyncio.sleep(0)  # the other connections' turn
                    if transport.is_closing():
                        break
                reply = await self._session.respond(self._queue.popleft())
                if reply is None:
                    self._queue.clear()
                    _reset(transport)
                if transport.is_closing():
                    break
                transport.write(reply)
                if self._drain_waiter is not None:
                    await self._drain_waiter
                if (
                    self._reading_paused
                    and not self._listener.draining
                    and len(self._queue) < self._limits.max_queued // 2
                ):
                    self._reading_paused = False
                    transport.resume_reading()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request handler failed; closing connection", extra={"listener": self._listener.name})
            transport.abort()
        finally:
            self._worker = None
            self._last_activity = self._loop.time()
        if self._listener.draining or self._eof:
            transport.close()

    # --- lifetimes -----------------------------------------------------------------------------

    def _check_timeout(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        now = self._loop.time()
        writing_blocked = self._drain_waiter is not None
        if self._worker is not None and not writing_blocked:
            deadline = now + self._limits.idle_timeout  # a lookup is running; userli's timeout bounds it
        elif writing_blocked:
            deadline = self._last_activity + self._limits.stall_timeout
        elif self._partial_since is not None:
            deadline = self._partial_since + self._limits.stall_timeout
        elif not self._in_pool:
            deadline = self._last_activity + self._limits.stall_timeout
        else:
            deadline = self._last_activity + self._limits.idle_timeout
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._check_timeout)
            return
        reason = "stopped reading" if writing_blocked else "stalled request" if self._partial_since else "idle"
        log.debug("closing connection", extra={"listener": self._listener.name, "reason": reason})
        if writing_blocked:
            transport.abort()
        else:
            transport.close()

    def _arm(self, deadline: float) -> None:
        """Make the timer fire no later than ``deadline`` (it is otherwise only pushed back lazily)."""
        if self._timer is not None and self._timer.when() > deadline:
            self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_timeout)

    def drain(self) -> None:
        """Shutdown: read nothing more; close once the queued requests are answered."""
        transport = self._transport
        if transport is None:
            return
        if self._worker is None:
            transport.close()
        elif not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset (SO_LINGER 0 s), not a FIN: a client that only learns of a closed
    connection when it writes (Postfix's auth client) then fails that write at once and
    reconnects, instead of sending its next request into the dead socket."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def bound_address(sockets: Sequence[Any], configured: ListenAddress) -> ListenAddress:
    """The address a server really listens on (the kernel's port when the configured one was 0)."""
    if configured.path is not None:
        return configured
    host, port = sockets[0].getsockname()[:2]
    return ListenAddress(host=host, port=port)


def _listening_sockets(address: ListenAddress) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for an address (a host name may give several)."""
    if address.path is not None:
        places = [(socket.AF_UNIX, address.path)]
    elif not address.host:  # every interface: one dual-stack socket where the system has both
        places = [(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET, ("", address.port or 0))]
    else:
        found = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        places = [(family, sockaddr) for family, *_, sockaddr in dict.fromkeys(found)]
    sockets: list[socket.socket] = []
    try:
        for family, place in places:
            dual = family == socket.AF_INET6 and not address.host
            sockets.append(socket.create_server(place, family=family, backlog=BACKLOG, dualstack_ipv6=dual))
            sockets[-1].setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead process; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: stale
    else:
        raise OSError(f"{path} is in use by a running process")
    finally:
        probe.close()
