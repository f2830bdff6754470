"""The in-process tier of the lookup cache, shaped for the hot path (issue 15).

One structure serves both sides of a lookup, so one place decides what is fresh:

* the resilience layer keeps userli's last answer per map and canonical key, with the times
  until which it is fresh and usable stale (``get``/``put``/``delete``);
* the socketmap hot path asks for the reply to a request as Postfix sent it (``reply_now``).

Each entry is keyed by the request Postfix sends for its key, ``b"alias john@example.org"``, and
its record carries the encoded socketmap reply next to the answer's times. Postfix folds keys to
lower case before asking, so a request is normally in canonical form already, and a cache hit is
one dict lookup and one record read, whatever the number of addresses. A request that is not in
canonical form (upper case, quoted, a full address in the domain map) or whose answer depends on
a second key (``user+tag@`` not found, then ``user@``) is worked out on the way through
``get``: a few microseconds more, never a different answer.

Keys and records are ``bytes``: a dict holding only them is never tracked by the garbage
collector, so a million entries add nothing to a collection's pause, and an entry costs about
200 bytes (bench/hotpath.py). The reply lives in the same record as the answer it was built
from, so it is replaced, expires and goes with it.
"""

from __future__ import annotations

import struct

from adapter.cache import Answer, Entry, Generations, decode, encode
from adapter.keys import map_keys
from adapter.protocols.netstring import encode as netstring
from adapter.protocols.socketmap import MAX_REPLY_PAYLOAD
from adapter.userli import MAPS, Found

__all__ = ["LookupCache", "request_key"]

# A record: fresh until, usable stale until (clock seconds), flags; then the socketmap reply.
_TIMES = struct.Struct("<dd")
_FLAGS = _TIMES.size
_REPLY = _FLAGS + 1
_FOUND = 1
_DIRECT = 2  # the reply answers a request for exactly this key (see _direct)
_MAP_SHIFT = 2  # the map's index in MAPS sits above the two flag bits
_STATUS = ("notfound", "success")  # the request metric's label, by _FOUND


def request_key(map_name: str, key: str) -> bytes:
    """The request Postfix sends for a canonical key: the entry's key."""
    return f"{map_name} {key}".encode()


class LookupCache:
    def __init__(self, size: int, delimiters: str = "") -> None:
        self._entries: Generations[bytes, bytes] = Generations(size)
        self._delimiters = delimiters

    def __len__(self) -> int:
        return len(self._entries)

    def reply_now(self, request: bytes, now: float) -> tuple[bytes, str, str] | None:
        """(reply, map, request status) for a request answered by a fresh entry of its own key."""
        record = self._entries.get(request)
        if record is None or now >= _TIMES.unpack_from(record)[0]:
            return None
        flags = record[_FLAGS]
        if not flags & _DIRECT:
            return None
        return record[_REPLY:], MAPS[flags >> _MAP_SHIFT], _STATUS[flags & _FOUND]

    def get(self, map_name: str, key: str, now: float) -> Entry[Answer] | None:
        """The entry for a canonical key, unless it is neither fresh nor usable stale any more."""
        request = request_key(map_name, key)
        record = self._entries.get(request)
        if record is None:
            return None
        fresh_until, stale_until = _TIMES.unpack_from(record)
        if now >= fresh_until and now >= stale_until:
            self._entries.delete(request)
            return None
        answer = decode(record[_REPLY:].partition(b":")[2][:-1].decode())
        assert answer is not None  # records are built by put() alone
        return Entry(answer, fresh_until, stale_until)

    def put(self, map_name: str, key: str, entry: Entry[Answer]) -> None:
        payload = encode(entry.answer).encode()
        found = isinstance(entry.answer, Found)
        flags = MAPS.index(map_name) << _MAP_SHIFT | (_FOUND if found else 0)
        if len(payload) <= MAX_REPLY_PAYLOAD and self._direct(map_name, key, found):
            flags |= _DIRECT
        record = _TIMES.pack(entry.fresh_until, entry.stale_until) + bytes((flags,)) + netstring(payload)
        self._entries.put(request_key(map_name, key), record)

    def delete(self, map_name: str, key: str) -> None:
        self._entries.delete(request_key(map_name, key))

    def keys(self, map_name: str, raw_key: str) -> tuple[str, ...]:
        """The canonical keys asked for a request's key, in order: the rules that decide which
        entry answers a request live here, beside the entries, so they cannot disagree."""
        return map_keys(map_name, raw_key, self._delimiters)

    def _direct(self, map_name: str, key: str, found: bool) -> bool:
        """Whether a request for exactly this key gets this answer: its first canonical key is the
        key itself, and either the answer is found or no other key would be asked after it."""
        keys = self.keys(map_name, key)
        return bool(keys) and keys[0] == key and (found or len(keys) == 1)
