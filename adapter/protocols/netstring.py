"""Sans-I/O netstring codec (``<decimal length>:<bytes>,``), the framing of Postfix socketmap.

The decoder never touches a socket: feed it whatever arrived, in any split, and it returns every
complete payload. Two contracts matter for a server facing untrusted clients:

* The length prefix is checked against ``max_length`` *before* anything is buffered for the body,
  so a client cannot make us allocate from a number it chose.
* Work stays O(bytes received): each ``feed`` scans only new bytes and compacts the buffer once.
"""

from __future__ import annotations

__all__ = ["NetstringDecoder", "NetstringError", "encode"]

_COLON = ord(":")
_COMMA = ord(",")


class NetstringError(ValueError):
    """The byte stream is not a valid netstring: the connection cannot be resynchronised."""


def encode(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    def __init__(self, max_length: int = 10_000) -> None:
        self._max_length = max_length
        self._max_digits = len(str(max_length))
        self._buffer = bytearray()
        self._expected: int | None = None  # body length once the prefix has been read

    @property
    def pending(self) -> bool:
        """True while part of a netstring is buffered (a request is half received)."""
        return self._expected is not None or bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads completed by them, in order."""
        buffer = self._buffer
        if not buffer and self._expected is None:
            # The common case, one whole netstring per read (a Postfix client waits for each
            # reply), taken without copying into the buffer; anything else goes the long way.
            colon = data.find(b":", 0, self._max_digits + 1)
            if colon > 0 and data[-1] == _COMMA and data[:colon].isdigit():
                length = int(data[:colon])
                if colon + length + 2 == len(data) and length <= self._max_length:
                    return [data[colon + 1 : -1]]
        buffer += data
        payloads: list[bytes] = []
        start = 0
        while True:
            if self._expected is None:
                colon = buffer.find(b":", start, start + self._max_digits + 1)
                if colon < 0:
                    if len(buffer) - start > self._max_digits:
                        raise NetstringError("length prefix too long or missing ':'")
                    self._check_digits(buffer, start, len(buffer))
                    break
                self._check_digits(buffer, start, colon)
                if colon == start:
                    raise NetstringError("empty length prefix")
                length = int(buffer[start:colon])
                if length > self._max_length:
                    raise NetstringError(f"netstring length {length} over limit {self._max_length}")
                self._expected = length
                start = colon + 1
            end = start + self._expected
            if len(buffer) <= end:  # body or trailing comma not complete yet
                break
            if buffer[end] != _COMMA:
                raise NetstringError("missing ',' after netstring body")
            payloads.append(bytes(buffer[start:end]))
            self._expected = None
            start = end + 1
        if start:
            del buffer[:start]
        return payloads

    @staticmethod
    def _check_digits(buffer: bytearray, start: int, end: int) -> None:
        if not buffer[start:end].isdigit() and end > start:
            raise NetstringError("non-digit in length prefix")
