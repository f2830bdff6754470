"""Dovecot's dict proxy protocol (``proxy:<socket>:<name>``, Dovecot 2.3), sans-I/O, server side.

One line per command, arguments separated by TABs and tab-escaped (``\\x01`` then ``1``, ``t``,
``r`` or ``n``). The client starts with a hello, ``H<major>\\t<minor>\\t<value type>\\t<user>\\t
<dict name>`` (2.3.19 sends major 3, minor 2); then:

* ``L<key>[\\t<user>]``, a lookup: ``O<value>`` found, ``N`` not found, ``F<error>`` failed;
* ``I<flags>\\t<max rows>\\t<path>...``, an iteration: rows, then an empty line;
* ``B``/``S``/``U``/``A``/``T`` begin and fill a transaction (no reply); ``C<id>``/``D<id>``
  commit it (``O<id>``, ``N<id>``, ``F<id>\\t<error>``); ``R<id>`` rolls it back (no reply).
"""

from __future__ import annotations

from dataclasses import dataclass

# Dovecot's tab-escaping, the same in its auth protocol
from adapter.protocols.dovecot_auth import escape as tabescape
from adapter.protocols.dovecot_auth import unescape as tabunescape

__all__ = [
    "Command",
    "DictProtocolError",
    "commit_failed",
    "failed",
    "found",
    "iteration_finished",
    "not_found",
    "parse",
    "tabescape",
    "tabunescape",
]

MAX_LINE = 65_536  # bytes of a command line; a userdb key is a few hundred


class DictProtocolError(ValueError):
    """Not Dovecot's dict protocol: the connection cannot go on."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # one letter: H, L, I, B, S, U, A, T, C, D, R
    args: tuple[str, ...]


def parse(line: bytes) -> Command:
    if not line:
        raise DictProtocolError("empty command")
    text = line.decode("utf-8", errors="replace")
    return Command(text[0], tuple(tabunescape(arg) for arg in text[1:].split("\t")))


def found(value: str) -> bytes:
    return b"O" + tabescape(value).encode() + b"\n"


def not_found() -> bytes:
    return b"N\n"


def failed(error: str) -> bytes:
    return b"F" + tabescape(error).encode() + b"\n"


def iteration_finished() -> bytes:
    return b"\n"


def commit_failed(transaction: str, error: str) -> bytes:
    return f"F{tabescape(transaction)}\t{tabescape(error)}\n".encode()
