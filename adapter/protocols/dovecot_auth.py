"""Sans-I/O server side of the Dovecot authentication protocol, as Postfix speaks it
(``smtpd_sasl_type = dovecot``).

Line based (LF), TAB-separated, values escaped with byte 0x01. The server greets first; MECH lines
must come before SPID, or Postfix 3.x takes the socket for an auth-master one and gives up. The
mechanisms are PLAIN (``resp=`` inline or in a CONT) and LOGIN (username and password in two CONT
round trips). This module runs the conversations and yields events; it never checks a password:

* ``Challenge``: protocol bytes to send at once (a CONT);
* ``Rejected``: the request cannot succeed as sent (bad base64, empty user, unknown mechanism);
* ``Verify``: username and password are complete and need checking.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from adapter.protocols.lines import LineReader

__all__ = [
    "MAX_LINE",
    "MECHANISMS",
    "AuthProtocolError",
    "AuthServerConnection",
    "Challenge",
    "Rejected",
    "Verify",
    "escape",
    "fail",
    "handshake",
    "ok",
    "unescape",
]

MAX_LINE = 16 * 1024
MAX_CONVERSATIONS = 16  # AUTH requests in progress on one connection
MECHANISMS = ("PLAIN", "LOGIN")
USERNAME_PROMPT = base64.b64encode(b"Username:")
PASSWORD_PROMPT = base64.b64encode(b"Password:")

_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n", "\x00": "\x010"}
_UNESCAPES = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\x00"}


class AuthProtocolError(ValueError):
    """The peer does not speak the protocol (wrong version, overlong line): close the connection."""


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    request_id: str
    mechanism: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verify:
    request_id: str
    mechanism: str
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password, not even in a traceback
        return f"Verify({self.request_id!r}, {self.mechanism!r}, {self.username!r}, password=***)"


Event = Challenge | Rejected | Verify


def escape(value: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in value) if any(c in _ESCAPES for c in value) else value


def unescape(value: str) -> str:
    if "\x01" not in value:
        return value
    out, chars = [], iter(value)
    for c in chars:
        out.append(_UNESCAPES.get(next(chars, ""), "") if c == "\x01" else c)
    return "".join(out)


def handshake(pid: int, connection_id: int, cookie: str) -> bytes:
    mechanisms = "".join(f"MECH\t{m}\tplaintext\n" for m in MECHANISMS)
    return f"VERSION\t1\t2\n{mechanisms}SPID\t{pid}\nCUID\t{connection_id}\nCOOKIE\t{cookie}\nDONE\n".encode()


def ok(request_id: str, user: str) -> bytes:
    return f"OK\t{request_id}\tuser={escape(user)}\n".encode()


def fail(request_id: str, reason: str, user: str = "") -> bytes:
    """Postfix answers 535 and shows ``reason``; it logs ``user`` as ``sasl_username`` (Dovecot
    and the Go adapter send it too). (Postfix ignores Dovecot's ``temp`` flag: a temporary
    failure has to be signalled by closing the connection, see adapter/sasl.py.)"""
    user_field = f"\tuser={escape(user)}" if user else ""
    return f"FAIL\t{request_id}\treason={escape(reason)}{user_field}\n".encode()


def _cont(request_id: str, challenge: bytes) -> Challenge:
    return Challenge(f"CONT\t{request_id}\t".encode() + challenge + b"\n")


@dataclass(slots=True)
class _Conversation:
    mechanism: str
    username: str | None = None  # LOGIN, once the username has arrived


class AuthServerConnection:
    """One client connection's protocol state.

    Like Dovecot, the client must open with ``VERSION`` and send ``CPID`` before any request
    (Postfix sends both at once); a client that does not is not speaking this protocol and is
    disconnected instead of being answered."""

    def __init__(self) -> None:
        self._lines = LineReader(MAX_LINE, AuthProtocolError)
        self._conversations: dict[str, _Conversation] = {}
        self._version_seen = False
        self._cpid_seen = False

    @property
    def pending(self) -> bool:
        return self._lines.pending

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for line in self._lines.feed(data):
            event = self._line([unescape(f) for f in line.decode("utf-8", "replace").split("\t")])
            if event is not None:
                events.append(event)
        return events

    def _line(self, fields: list[str]) -> Event | None:
        command, args = fields[0], fields[1:]
        if command == "VERSION":
            if not args or args[0] != "1":
                raise AuthProtocolError("unsupported protocol version")
            self._version_seen = True
            return None
        if not self._version_seen:
            raise AuthProtocolError("the client did not start with VERSION")
        if command == "CPID":
            self._cpid_seen = True
            return None
        if command in ("AUTH", "CONT") and not self._cpid_seen:
            raise AuthProtocolError(f"{command} before the client's CPID handshake")
        if command == "AUTH":
            if len(args) < 2 or not args[0]:
                raise AuthProtocolError("AUTH without id and mechanism")
            return self._auth(args[0], args[1].upper(), args[2:])
        if command == "CONT":
            if not args:
                raise AuthProtocolError("CONT without id")
            return self._cont(args[0], args[1] if len(args) > 1 else "")
        if command == "CANCEL" and args:
            self._conversations.pop(args[0], None)
        return None  # CANCEL, and commands newer clients may send

    def _auth(self, request_id: str, mechanism: str, params: list[str]) -> Event:
        if mechanism not in MECHANISMS:
            return Rejected(request_id, "other", "Unsupported authentication mechanism")
        if request_id in self._conversations:
            return Rejected(request_id, mechanism, "Duplicate request id")
        if len(self._conversations) >= MAX_CONVERSATIONS:
            raise AuthProtocolError("too many authentication requests in progress")
        response = next((p[5:] for p in params if p.startswith("resp=")), None)
        if mechanism == "PLAIN":
            if response is None:
                self._conversations[request_id] = _Conversation("PLAIN")
                return _cont(request_id, b"")
            return _plain(request_id, response)
        conversation = self._conversations[request_id] = _Conversation("LOGIN")
        if response is None:
            return _cont(request_id, USERNAME_PROMPT)
        return self._login_step(request_id, conversation, response)

    def _cont(self, request_id: str, data: str) -> Event:
        conversation = self._conversations.get(request_id)
        if conversation is None:
            return Rejected(request_id, "other", "Unknown request id")
        if conversation.mechanism == "PLAIN":
            del self._conversations[request_id]
            return _plain(request_id, data)
        return self._login_step(request_id, conversation, data)

    def _login_step(self, request_id: str, conversation: _Conversation, data: str) -> Event:
        value = _decode(data)
        if value is None:
            self._conversations.pop(request_id, None)
            return Rejected(request_id, "LOGIN", "Invalid base64 data")
        if conversation.username is None:
            conversation.username = value
            return _cont(request_id, PASSWORD_PROMPT)
        del self._conversations[request_id]
        return _credentials(request_id, "LOGIN", conversation.username, value)


def _plain(request_id: str, data: str) -> Event:
    value = _decode(data)
    if value is None:
        return Rejected(request_id, "PLAIN", "Invalid base64 data")
    parts = value.split("\x00")
    if len(parts) != 3:
        return Rejected(request_id, "PLAIN", "Invalid PLAIN response")
    authzid, authcid, password = parts
    if authzid and authzid.strip().lower() != authcid.strip().lower():
        return Rejected(request_id, "PLAIN", "Authorization identity not allowed")
    return _credentials(request_id, "PLAIN", authcid, password)


def _credentials(request_id: str, mechanism: str, username: str, password: str) -> Event:
    if not username.strip() or not password:
        return Rejected(request_id, mechanism, "Empty username or password")
    return Verify(request_id, mechanism, username, password)


def _decode(data: str) -> str | None:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
