"""Sans-I/O codec for Postfix SMTP access policy delegation (SMTPD_POLICY_README).

A request is ``name=value`` lines ended by an empty line; the reply is ``action=<action>`` and an
empty line. Unknown attributes are kept but need not be understood (Postfix adds new ones over
time). Limits guard against a peer that is not Postfix: a line over 16 KiB, more than 1000
attributes, or a line without ``=`` is broken framing and the connection is closed.
"""

from __future__ import annotations

__all__ = ["MAX_ATTRIBUTES", "MAX_LINE", "PolicyDecoder", "PolicyError", "reply"]

MAX_LINE = 16 * 1024
MAX_ATTRIBUTES = 1000


class PolicyError(ValueError):
    """Not a policy request: the connection cannot go on."""


def reply(action: str) -> bytes:
    return b"action=" + action.encode("utf-8") + b"\n\n"


class PolicyDecoder:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._attributes: dict[str, str] = {}

    @property
    def pending(self) -> bool:
        """True while part of a request is buffered."""
        return bool(self._buffer) or bool(self._attributes)

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Add received bytes; return the requests completed by them, in order."""
        buffer = self._buffer
        buffer += data
        requests: list[dict[str, str]] = []
        start = 0
        while True:
            newline = buffer.find(b"\n", max(start, self._scanned))
            if newline < 0:
                self._scanned = len(buffer)
                if len(buffer) - start > MAX_LINE:
                    raise PolicyError(f"line longer than {MAX_LINE} bytes")
                break
            line = bytes(buffer[start:newline]).removesuffix(b"\r")
            start = newline + 1
            if len(line) > MAX_LINE:
                raise PolicyError(f"line longer than {MAX_LINE} bytes")
            if not line:
                requests.append(self._attributes)
                self._attributes = {}
                continue
            name, equals, value = line.partition(b"=")
            if not equals or not name:
                raise PolicyError("attribute line without name=value")
            if len(self._attributes) >= MAX_ATTRIBUTES:
                raise PolicyError(f"more than {MAX_ATTRIBUTES} attributes")
            self._attributes[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        if start:
            del buffer[:start]
            self._scanned = max(0, self._scanned - start)
        return requests
