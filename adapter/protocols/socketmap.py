"""Postfix socketmap_table(5) requests and replies on top of netstrings.

A request is ``NAME SP KEY`` (split on the first space: keys may contain spaces). A reply is one
of ``OK data``, ``NOTFOUND ``, ``TEMP reason``, ``PERM reason``. Postfix reads ``OK`` without a
trailing space as *not found*, so every reply word is always followed by a space.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapter.protocols.netstring import encode

__all__ = ["MAX_REPLY_PAYLOAD", "ReplyTooLarge", "Request", "notfound", "ok", "parse_request", "perm", "temp"]

# Postfix's client rejects replies whose payload is longer than this (dict_sockmap.c).
MAX_REPLY_PAYLOAD = 100_000


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    key: str | None  # None: the request had no space, hence no key at all


class ReplyTooLarge(ValueError):
    """An OK reply would exceed what Postfix accepts."""


def parse_request(payload: bytes) -> Request:
    # Undecodable bytes become U+FFFD, which no userli address contains, so they are answered
    # as not found instead of reaching userli.
    text = payload.decode("utf-8", errors="replace")
    name, space, key = text.partition(" ")
    return Request(name, key if space else None)


def ok(data: str) -> bytes:
    payload = b"OK " + data.encode("utf-8")
    if len(payload) > MAX_REPLY_PAYLOAD:
        raise ReplyTooLarge(f"reply of {len(payload)} bytes over Postfix's limit")
    return encode(payload)


NOTFOUND = encode(b"NOTFOUND ")


def notfound() -> bytes:
    return NOTFOUND


def temp(reason: str) -> bytes:
    return encode(b"TEMP " + reason.encode("utf-8"))


def perm(reason: str) -> bytes:
    return encode(b"PERM " + reason.encode("utf-8"))
