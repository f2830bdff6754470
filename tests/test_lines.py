"""The shared line splitter of the line-based protocols."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.protocols.lines import LineReader


class TooLong(ValueError):
    pass


def test_lines_and_pending() -> None:
    reader = LineReader(100, TooLong)
    assert reader.feed(b"one\ntwo\r\nthr") == [b"one", b"two"]
    assert reader.pending
    assert reader.feed(b"ee\n\n") == [b"three", b""]
    assert not reader.pending


def test_limit_applies_to_complete_and_partial_lines() -> None:
    assert LineReader(5, TooLong).feed(b"12345\n") == [b"12345"]
    with pytest.raises(TooLong):
        LineReader(5, TooLong).feed(b"123456\n")
    with pytest.raises(TooLong):
        LineReader(5, TooLong).feed(b"123456")  # no newline yet, already too long


@given(lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20), data=st.data())
def test_any_split_yields_the_same_lines(lines: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    reader, out = LineReader(1000, TooLong), []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += reader.feed(wire[start:end])
    assert out == [line.removesuffix(b"\r") for line in lines]
