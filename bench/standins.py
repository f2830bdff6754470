"""The peers a benchmark needs, each meant to run in a process of its own:

* a fast userli stand-in (keep-alive HTTP/1.1 answering by rule for any number of generated users,
  aliases and domains, so cold keys need never repeat); a bench tool with a deliberately minimal
  request parser, since it only ever talks to the adapter under test;
* a constant-reply socketmap server: the ceiling of a Python server on this machine, to prove the
  load generator is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import uvloop

DOMAINS = [f"d{i}.example" for i in range(20)]
_DOMAIN_INDEX = {domain.encode(): i for i, domain in enumerate(DOMAINS)}
NEGATIVE = {b"alias": b"[]", b"senders": b"[]", b"domain": b"false", b"mailbox": b"false"}


def user_address(i: int) -> str:
    return f"user{i}@{DOMAINS[i % len(DOMAINS)]}"


def alias_address(i: int) -> str:
    """An alias of user ``4 * i`` (aliases exist for every fourth user)."""
    return f"alias{4 * i}@{DOMAINS[4 * i % len(DOMAINS)]}"


def unknown_address(i: int) -> str:
    return f"unknown{i}@{DOMAINS[i % len(DOMAINS)]}"


def answer(map_name: bytes, key: bytes) -> bytes:
    """userli's answer by rule, for any number of users: ``user{i}@d{i % 20}.example`` has a
    mailbox and may send as itself, ``alias{i}@`` (i a multiple of 4) forwards to ``user{i}@``,
    the 20 domains exist, everything else is not found."""
    if map_name == b"domain":
        return b"true" if key in _DOMAIN_INDEX else b"false"
    local, _, domain = key.partition(b"@")
    index = _DOMAIN_INDEX.get(domain)
    for prefix in (b"user", b"alias"):
        number = local[len(prefix) :]
        if local.startswith(prefix) and number.isdigit() and index is not None and int(number) % 20 == index:
            if prefix == b"user" and map_name == b"mailbox":
                return b"true"
            if prefix == b"user" and map_name == b"senders":
                return b'["%s"]' % key
            if prefix == b"alias" and map_name == b"alias" and int(number) % 4 == 0:
                return b'["user%s@%s"]' % (number, domain)
    return NEGATIVE.get(map_name, b"[]")


class UserliStandIn(asyncio.Protocol):
    """Keep-alive HTTP/1.1 answering ``GET /api/postfix/{map}/{key}`` by rule (see ``answer``)."""

    def __init__(self) -> None:
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        out = []
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            parts = head.split(b" ", 2)[1].split(b"/", 4)  # b"", b"api", b"postfix", map, key
            body = answer(parts[3], unquote_to_bytes(parts[4]))
            out.append(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        if out:
            self._transport.write(b"".join(out))  # type: ignore[attr-defined]


REPLY = b"4:OK 1,"


class ConstantReply(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        count = self._buffer.count(b",")  # socketmap requests here carry no comma in the key
        if count:
            self._buffer = self._buffer[self._buffer.rindex(b",") + 1 :]
            self._transport.write(REPLY * count)  # type: ignore[attr-defined]


def serve(factory: Callable[[], asyncio.Protocol], address: str, cpu: int, ready: object) -> None:
    """Run a server in this process: ``address`` is ``host:port`` or a UNIX socket path."""
    os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if address.startswith("/"):
            server = await loop.create_unix_server(factory, address, backlog=1024)
        else:
            host, port = address.rsplit(":", 1)
            server = await loop.create_server(factory, host, int(port), backlog=1024)
        ready.set()  # type: ignore[attr-defined]
        await server.serve_forever()

    uvloop.run(main())
