"""Sans-I/O codec for Postfix SMTP access policy delegation (SMTPD_POLICY_README).

A request is ``name=value`` lines ended by an empty line; the reply is ``action=<action>`` and an
empty line. Unknown attributes are kept but need not be understood (Postfix adds new ones over
time). Limits guard against a peer that is not Postfix: a line over 16 KiB, more than 1000
attributes, or a line without ``=`` is broken framing and the connection is closed.
"""

from __future__ import annotations

from adapter.protocols.lines import LineReader

__all__ = ["MAX_ATTRIBUTES", "MAX_LINE", "PolicyDecoder", "PolicyError", "reply"]

MAX_LINE = 16 * 1024
MAX_ATTRIBUTES = 1000


class PolicyError(ValueError):
    """Not a policy request: the connection cannot go on."""


def reply(action: str) -> bytes:
    return b"action=" + action.encode("utf-8") + b"\n\n"


class PolicyDecoder:
    def __init__(self) -> None:
        self._lines = LineReader(MAX_LINE, PolicyError)
        self._attributes: dict[str, str] = {}

    @property
    def pending(self) -> bool:
        """True while part of a request is buffered."""
        return self._lines.pending or bool(self._attributes)

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Add received bytes; return the requests completed by them, in order."""
        requests: list[dict[str, str]] = []
        for line in self._lines.feed(data):
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
        return requests
