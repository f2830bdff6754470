"""The peers a benchmark needs, each meant to run in a process of its own:

* a fast userli stand-in (keep-alive HTTP/1.1 with precomputed answers for a generated data set:
  users, aliases and domains); a bench tool with a deliberately minimal request parser, since it
  only ever talks to the adapter under test;
* a constant-reply socketmap server: the ceiling of a Python server on this machine, to prove the
  load generator is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable

import uvloop

DOMAINS = [f"d{i}.example" for i in range(20)]


def dataset(users: int) -> dict[bytes, bytes]:
    """``/api/postfix/{map}/{key}`` -> JSON body, for every existing entry."""
    answers: dict[bytes, bytes] = {}
    for domain in DOMAINS:
        answers[f"/api/postfix/domain/{domain}".encode()] = b"true"
    for i in range(users):
        address = f"user{i}@{DOMAINS[i % len(DOMAINS)]}"
        answers[f"/api/postfix/mailbox/{address}".encode()] = b"true"
        answers[f"/api/postfix/senders/{address}".encode()] = json.dumps([address]).encode()
        if i % 4 == 0:
            alias = f"alias{i}@{DOMAINS[i % len(DOMAINS)]}"
            answers[f"/api/postfix/alias/{alias}".encode()] = json.dumps([address]).encode()
    return answers


def user_address(i: int) -> str:
    return f"user{i}@{DOMAINS[i % len(DOMAINS)]}"


NEGATIVE = {b"alias": b"[]", b"senders": b"[]", b"domain": b"false", b"mailbox": b"false"}


class UserliStandIn(asyncio.Protocol):
    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self._answers = answers
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        out = []
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            path = head.split(b" ", 2)[1]
            body = self._answers.get(path) or NEGATIVE.get(path.split(b"/")[3], b"[]")
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
