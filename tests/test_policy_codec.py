"""The sans-I/O policy delegation codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.protocols.policy import MAX_ATTRIBUTES, MAX_LINE, PolicyDecoder, PolicyError, reply

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\n"
    b"sender=user@example.org\nrecipient_count=3\nsasl_username=user@example.org\n\n"
)
PARSED = {
    "request": "smtpd_access_policy",
    "protocol_state": "END-OF-MESSAGE",
    "protocol_name": "ESMTP",
    "sender": "user@example.org",
    "recipient_count": "3",
    "sasl_username": "user@example.org",
}


def test_reply() -> None:
    assert reply("DUNNO") == b"action=DUNNO\n\n"
    assert reply("REJECT Rate limit exceeded") == b"action=REJECT Rate limit exceeded\n\n"


def test_one_request() -> None:
    decoder = PolicyDecoder()
    assert decoder.feed(REQUEST) == [PARSED]
    assert not decoder.pending


def test_several_requests_in_one_read() -> None:
    assert PolicyDecoder().feed(REQUEST * 3) == [PARSED] * 3


def test_split_byte_by_byte() -> None:
    decoder = PolicyDecoder()
    out = []
    for i in range(len(REQUEST)):
        out += decoder.feed(REQUEST[i : i + 1])
        assert decoder.pending == (i < len(REQUEST) - 1)
    assert out == [PARSED]


def test_unknown_attributes_and_empty_values_are_kept() -> None:
    assert PolicyDecoder().feed(b"future_attribute=42\nsender=\n\n") == [{"future_attribute": "42", "sender": ""}]


def test_value_may_contain_equals_signs() -> None:
    assert PolicyDecoder().feed(b"ccert_subject=CN=x,O=y\n\n") == [{"ccert_subject": "CN=x,O=y"}]


def test_crlf_is_tolerated() -> None:
    assert PolicyDecoder().feed(b"sender=a@b\r\n\r\n") == [{"sender": "a@b"}]


@pytest.mark.parametrize(
    "wire",
    [
        b"this line has no equals sign\n",
        b"=value without a name\n",
        b"x" * (MAX_LINE + 1),  # no newline yet, already too long
        b"name=" + b"x" * MAX_LINE + b"\n",
        b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES + 1)),
    ],
)
def test_malformed_input_is_rejected(wire: bytes) -> None:
    with pytest.raises(PolicyError):
        PolicyDecoder().feed(wire)


def test_limits_are_inclusive() -> None:
    line = b"n=" + b"x" * (MAX_LINE - 2) + b"\n"
    assert PolicyDecoder().feed(line + b"\n") == [{"n": "x" * (MAX_LINE - 2)}]
    many = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES)) + b"\n"
    assert len(PolicyDecoder().feed(many)[0]) == MAX_ATTRIBUTES


attributes = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20),
    st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=50),
    max_size=15,
)


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(attributes, max_size=5), data=st.data())
def test_any_split_yields_the_same_requests(requests: list[dict[str, str]], data: st.DataObject) -> None:
    wire = b"".join(b"".join(f"{k}={v}\n".encode() for k, v in r.items()) + b"\n" for r in requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    decoder = PolicyDecoder()
    out: list[dict[str, str]] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += decoder.feed(wire[start:end])
    assert out == requests
    assert not decoder.pending


@settings(max_examples=300, deadline=None)
@given(garbage=st.lists(st.binary(max_size=2000), max_size=20))
def test_garbage_only_ever_raises_policy_error(garbage: list[bytes]) -> None:
    decoder = PolicyDecoder()
    try:
        for chunk in garbage:
            decoder.feed(chunk)
    except PolicyError:
        pass
