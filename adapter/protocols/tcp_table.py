"""Postfix tcp_table(5) requests and replies, sans-I/O.

A request is one line, ``get SP key LF``; a reply is one line, ``NNN SP text LF``, at most 4,096
bytes with its LF: ``200`` found (the text is the value), ``500`` not found (the connection
stays), ``400`` a temporary error (Postfix disconnects and defers). Keys and values travel
``%XX``-encoded: ``%``, whitespace, control characters and every byte from 0x80 (so UTF-8 too),
in upper-case hex; decoding accepts either case. The protocol carries no map name: a listener
serves one map.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_REPLY",
    "MAX_REQUEST",
    "TcpTableError",
    "decode",
    "encode",
    "found",
    "not_found",
    "parse_request",
    "temporary",
]

MAX_REPLY = 4096  # bytes of a reply line with its LF: Postfix's client refuses longer ones
MAX_REQUEST = 10_000  # bytes of a request line; a real key is a few hundred at most

_ESCAPE = re.compile(rb"[\x00-\x20%\x7f-\xff]")
_ESCAPED = re.compile(rb"%([0-9A-Fa-f]{2})")


class TcpTableError(ValueError):
    """The byte stream is not tcp_table: the connection cannot go on."""


def encode(data: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: b"%%%02X" % m.group()[0], data)


def decode(data: bytes) -> bytes:
    return _ESCAPED.sub(lambda m: bytes((int(m.group(1), 16),)), data)


def parse_request(line: bytes) -> bytes | None:
    """The decoded key of a ``get`` request, or None for any other request."""
    command, space, key = line.partition(b" ")
    if command != b"get" or not space:
        return None
    return decode(key)


def found(value: bytes) -> bytes:
    """``200`` with the value, or a temporary error when it would not fit Postfix's limit."""
    reply = b"200 " + encode(value) + b"\n"
    return reply if len(reply) <= MAX_REPLY else temporary("reply too large")


def not_found() -> bytes:
    return b"500 not found\n"


def temporary(reason: str) -> bytes:
    return b"400 " + encode(reason.encode("utf-8"))[: MAX_REPLY - 5] + b"\n"
