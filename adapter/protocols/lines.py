"""Sans-I/O line splitting for the line-based protocols (policy delegation, Dovecot auth).

Work stays O(bytes received) whatever the split: a partial line is never rescanned from its
start, and the buffer is compacted once per feed. A line longer than ``max_line`` (complete or
not) raises ``error``: the peer is not what it claims to be.
"""

from __future__ import annotations

__all__ = ["LineReader"]


class LineReader:
    def __init__(self, max_line: int, error: type[ValueError]) -> None:
        self._max_line = max_line
        self._error = error
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline

    @property
    def pending(self) -> bool:
        """True while part of a line is buffered."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the lines they complete (without LF, nor a CR before it)."""
        buffer = self._buffer
        buffer += data
        lines: list[bytes] = []
        start = 0
        while (newline := buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line = bytes(buffer[start:newline]).removesuffix(b"\r")
            if len(line) > self._max_line:
                raise self._error(f"line longer than {self._max_line} bytes")
            lines.append(line)
            start = newline + 1
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self._max_line:
            raise self._error(f"line longer than {self._max_line} bytes")
        return lines
