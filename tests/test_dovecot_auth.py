"""The sans-I/O Dovecot auth protocol core: handshake, PLAIN, LOGIN, CANCEL, escaping, limits."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.protocols.dovecot_auth import (
    MAX_LINE,
    AuthProtocolError,
    AuthServerConnection,
    Challenge,
    Rejected,
    Verify,
    escape,
    fail,
    handshake,
    ok,
    unescape,
)

CLIENT_HELLO = b"VERSION\t1\t0\nCPID\t4242\n"  # what Postfix sends first


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def resp(text: str | bytes) -> str:
    return "resp=" + b64(text)


def cont(request_id: str, text: str | bytes) -> bytes:
    return f"CONT\t{request_id}\t{b64(text)}\n".encode()


def auth(request_id: str, mechanism: str, *params: str) -> bytes:
    fields = ["AUTH", request_id, mechanism, "service=smtp", "nologin", "lip=127.0.0.1", "rip=127.0.0.1", *params]
    return ("\t".join(fields) + "\n").encode()


def connection() -> AuthServerConnection:
    conn = AuthServerConnection()
    assert conn.receive(CLIENT_HELLO) == []
    return conn


def test_handshake_order() -> None:
    lines = handshake(123, 7, "0123456789abcdef0123456789abcdef").decode().splitlines()
    assert lines[0] == "VERSION\t1\t2"
    assert lines[1:3] == ["MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext"]
    assert lines[3:] == ["SPID\t123", "CUID\t7", "COOKIE\t0123456789abcdef0123456789abcdef", "DONE"]
    commands = [line.split("\t")[0] for line in lines]
    assert max(i for i, c in enumerate(commands) if c == "MECH") < commands.index("SPID")  # MECH before SPID


def test_plain_inline() -> None:
    events = connection().receive(auth("1", "PLAIN", resp("\0user@example.org\0secret")))
    assert events == [Verify("1", "PLAIN", "user@example.org", "secret")]


def test_plain_with_matching_authzid() -> None:
    events = connection().receive(auth("1", "PLAIN", resp("User@example.org\0user@example.org\0pw")))
    assert events == [Verify("1", "PLAIN", "user@example.org", "pw")]


def test_plain_with_foreign_authzid_is_rejected() -> None:
    events = connection().receive(auth("1", "PLAIN", resp("admin@example.org\0user@example.org\0pw")))
    assert events == [Rejected("1", "PLAIN", "Authorization identity not allowed")]


def test_plain_via_cont() -> None:
    conn = connection()
    assert conn.receive(auth("5", "plain")) == [Challenge(b"CONT\t5\t\n")]  # empty challenge
    assert conn.receive(cont("5", "\0u@example.org\0pw")) == [Verify("5", "PLAIN", "u@example.org", "pw")]


def test_login() -> None:
    conn = connection()
    assert conn.receive(auth("2", "LOGIN")) == [Challenge(cont("2", "Username:"))]
    assert conn.receive(cont("2", "u@example.org")) == [Challenge(cont("2", "Password:"))]
    assert conn.receive(cont("2", "pass word")) == [Verify("2", "LOGIN", "u@example.org", "pass word")]


def test_login_with_initial_response() -> None:
    conn = connection()
    assert conn.receive(auth("3", "LOGIN", resp("u@example.org"))) == [Challenge(cont("3", "Password:"))]
    assert conn.receive(cont("3", "pw")) == [Verify("3", "LOGIN", "u@example.org", "pw")]


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (auth("1", "PLAIN", "resp=***not base64***"), "Invalid base64 data"),
        (auth("1", "PLAIN", resp("no separators")), "Invalid PLAIN response"),
        (auth("1", "PLAIN", resp(b"\0u@example.org\0\xff\xfe")), "Invalid base64 data"),  # not UTF-8
        (auth("1", "PLAIN", resp("\0\0pw")), "Empty username or password"),
        (auth("1", "PLAIN", resp("\0u@example.org\0")), "Empty username or password"),
        (auth("1", "PLAIN", resp("\0   \0pw")), "Empty username or password"),
    ],
)
def test_bad_plain_responses_are_rejected(wire: bytes, reason: str) -> None:
    assert connection().receive(wire) == [Rejected("1", "PLAIN", reason)]


def test_login_bad_base64_and_empty_password() -> None:
    conn = connection()
    conn.receive(auth("1", "LOGIN"))
    assert conn.receive(b"CONT\t1\t!!!\n") == [Rejected("1", "LOGIN", "Invalid base64 data")]
    conn.receive(auth("2", "LOGIN"))
    conn.receive(cont("2", "u@example.org"))
    assert conn.receive(b"CONT\t2\t\n") == [Rejected("2", "LOGIN", "Empty username or password")]


def test_unsupported_mechanism() -> None:
    assert connection().receive(auth("1", "CRAM-MD5")) == [
        Rejected("1", "other", "Unsupported authentication mechanism")
    ]


def test_cancel_ends_a_conversation() -> None:
    conn = connection()
    conn.receive(auth("1", "LOGIN"))
    assert conn.receive(b"CANCEL\t1\n") == []
    assert conn.receive(cont("1", "u@example.org")) == [Rejected("1", "other", "Unknown request id")]


def test_unknown_commands_and_parameters_are_ignored() -> None:
    conn = connection()
    assert conn.receive(b"SOMETHING_NEW\targ\n") == []
    events = conn.receive(auth("1", "PLAIN", "secured", "lport=25", "session=abc", resp("\0u@example.org\0pw")))
    assert events == [Verify("1", "PLAIN", "u@example.org", "pw")]


def test_pipelined_auths_on_one_connection() -> None:
    wire = (
        auth("1", "PLAIN", resp("\0a@example.org\0pa"))
        + auth("2", "LOGIN")
        + auth("3", "PLAIN", resp("\0c@example.org\0pc"))
    )
    events = connection().receive(wire)
    assert events == [
        Verify("1", "PLAIN", "a@example.org", "pa"),
        Challenge(cont("2", "Username:")),
        Verify("3", "PLAIN", "c@example.org", "pc"),
    ]


def test_lines_split_across_reads() -> None:
    conn = connection()
    wire = auth("9", "PLAIN", resp("\0u@example.org\0pw"))
    events = []
    for i in range(len(wire)):
        events += conn.receive(wire[i : i + 1])
    assert events == [Verify("9", "PLAIN", "u@example.org", "pw")]


def test_duplicate_request_id() -> None:
    conn = connection()
    conn.receive(auth("1", "LOGIN"))
    assert conn.receive(auth("1", "LOGIN")) == [Rejected("1", "LOGIN", "Duplicate request id")]


@pytest.mark.parametrize(
    "wire",
    [
        b"VERSION\t2\t0\n",  # major version must be 1
        b"AUTH\n",
        b"AUTH\t1\n",
        b"CONT\n",
        b"x" * (MAX_LINE + 1),
        b"AUTH\t1\tPLAIN\tresp=" + b"A" * MAX_LINE + b"\n",
    ],
)
def test_protocol_errors(wire: bytes) -> None:
    with pytest.raises(AuthProtocolError):
        AuthServerConnection().receive(wire)


def test_too_many_conversations() -> None:
    conn = connection()
    with pytest.raises(AuthProtocolError):
        for i in range(100):
            conn.receive(auth(str(i), "LOGIN"))


def test_replies() -> None:
    assert ok("1", "user@example.org") == b"OK\t1\tuser=user@example.org\n"
    assert fail("2", "authentication failed") == b"FAIL\t2\treason=authentication failed\n"
    assert fail("4", "tab\there\nnewline") == b"FAIL\t4\treason=tab\x01there\x01nnewline\n"


def test_escaped_password_is_unescaped() -> None:
    # A value with TAB or LF arrives escaped with 0x01 (resp= itself is base64, but any field may be)
    conn = connection()
    assert conn.receive(b"AUTH\t1\tPLAIN\tresp=" + b64("\0u@example.org\0p").encode() + b"\tx=a\x01tb\n") == [
        Verify("1", "PLAIN", "u@example.org", "p")
    ]


def test_verify_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(Verify("1", "PLAIN", "u@example.org", "s3cret"))


@given(st.text())
def test_escape_round_trip(value: str) -> None:
    escaped = escape(value)
    assert not any(c in escaped for c in "\t\n\r\x00")
    assert unescape(escaped) == value
