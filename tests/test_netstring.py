"""The sans-I/O netstring codec, fed bytes in every split a socket could produce."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.protocols.netstring import NetstringDecoder, NetstringError, encode


def test_encode() -> None:
    assert encode(b"") == b"0:,"
    assert encode(b"alias a@b") == b"9:alias a@b,"


def test_one_request_in_one_read() -> None:
    decoder = NetstringDecoder()
    assert decoder.feed(b"5:hello,") == [b"hello"]
    assert not decoder.pending


def test_pipelined_requests_in_one_read() -> None:
    assert NetstringDecoder().feed(b"1:a,2:bc,0:,3:def,") == [b"a", b"bc", b"", b"def"]


def test_request_split_byte_by_byte() -> None:
    decoder = NetstringDecoder()
    wire = b"11:alias x@y.z,"
    out: list[bytes] = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
        assert decoder.pending == (i < len(wire) - 1)
    assert out == [b"alias x@y.z"]


def test_payload_may_contain_colons_commas_and_digits() -> None:
    assert NetstringDecoder().feed(encode(b"12:3,4:") * 2) == [b"12:3,4:", b"12:3,4:"]


@pytest.mark.parametrize(
    "wire",
    [
        b"x:abc,",  # non-digit length
        b"-1:a,",
        b" 1:a,",
        b"+3:abc,",  # int() would take these: the prefix must be digits only
        b"1_0:abcdefghij,",
        b"3 :abc,",
        b":,",  # empty length
        b"3:abc;",  # wrong terminator
        b"3:abcd,",
        b"123456:",  # over the cap (10000 here)
        b"10001:",
        b"99999999999999999999",  # no colon within the longest allowed prefix
    ],
)
def test_broken_framing_is_rejected(wire: bytes) -> None:
    with pytest.raises(NetstringError):
        NetstringDecoder(max_length=10_000).feed(wire)


def test_length_is_checked_before_the_body_arrives() -> None:
    # A huge announced length is refused at once, before a single body byte is buffered.
    decoder = NetstringDecoder(max_length=100)
    with pytest.raises(NetstringError, match="over limit"):
        decoder.feed(b"101:")


def test_length_at_the_cap_is_accepted() -> None:
    assert NetstringDecoder(max_length=5).feed(b"5:abcde,") == [b"abcde"]


def test_a_whole_netstring_over_the_cap_is_refused() -> None:
    with pytest.raises(NetstringError, match="over limit"):
        NetstringDecoder(max_length=5).feed(b"6:abcdef,")


def test_one_whole_netstring_after_a_partial_one_keeps_the_order() -> None:
    decoder = NetstringDecoder()
    assert decoder.feed(b"3:ab") == []
    assert decoder.feed(b"c,") == [b"abc"]
    assert decoder.feed(b"2:de,") == [b"de"]
    assert not decoder.pending


def test_buffer_is_compacted() -> None:
    decoder = NetstringDecoder()
    for _ in range(1000):
        decoder.feed(b"3:abc,")
    assert not decoder.pending
    assert len(decoder._buffer) == 0


payloads = st.lists(st.binary(max_size=300), max_size=20)


@settings(max_examples=300, deadline=None)
@given(payloads=payloads, data=st.data())
def test_any_split_yields_the_same_payloads(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=30)))
    decoder = NetstringDecoder()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += decoder.feed(wire[start:end])
    assert out == payloads
    assert not decoder.pending


@settings(max_examples=500, deadline=None)
@given(garbage=st.lists(st.binary(max_size=50), max_size=20))
def test_garbage_only_ever_raises_netstring_error(garbage: list[bytes]) -> None:
    decoder = NetstringDecoder(max_length=1000)
    try:
        for chunk in garbage:
            for payload in decoder.feed(chunk):
                assert len(payload) <= 1000
    except NetstringError:
        pass
    # Whatever was fed, nothing beyond one capped netstring (prefix + body + comma) is buffered.
    assert len(decoder._buffer) <= 1000 + len("1000:,") + 50
