"""The requests a benchmark sends: what Postfix asks, at a provider's size.

* ``hot_set``: the lookups of a mail flow over a set of addresses, with exactly ``distinct``
  distinct keys across the four maps. For each recipient, in Postfix's order: its domain in the
  domain map (``virtual_mailbox_domains``), the address in the alias map, the bare domain in the
  alias map (``virtual_alias_domains`` defaults to the alias maps), the address in the mailbox
  map; for a quarter of the users also the sender map, as for an authenticated submission.
  Recipients are users (80 %), aliases (10 %) and unknown addresses (10 %), so about half of
  the answers are NOTFOUND, as in real traffic. Recipients come in random order; domain
  lookups repeat, every other key is asked once per round.
* ``cold_keys``: mailbox lookups of users never asked before (the stand-in knows any number).
"""

from __future__ import annotations

import random

from standins import NEGATIVE, alias_address, answer, unknown_address, user_address

COLD_BASE = 10_000_000  # cold users start here, far from the hot set's


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def hot_set(distinct: int, seed: int = 1) -> tuple[list[bytes], float]:
    """(request payloads, the share of them answered OK)."""
    blocks: list[list[str]] = []
    keys: set[str] = set()
    i = 0
    while len(keys) < distinct:
        kind = i % 10
        if kind < 8:
            address = user_address(i)
        elif kind == 8:
            address = alias_address(i)
        else:
            address = unknown_address(i)
        domain = address.rpartition("@")[2]
        block = [f"domain {domain}", f"alias {address}", f"alias {domain}", f"mailbox {address}"]
        if kind < 8 and i % 4 == 0:
            block.append(f"senders {address}")
        new = [request for request in block if request not in keys]
        if len(keys) + len(new) > distinct:  # the last recipient may not fit whole
            block = [request for request in block if request in keys or request.startswith("domain")]
            new = new[: distinct - len(keys)]
            block += new
        keys.update(new)
        blocks.append(block)
        i += 1
    random.Random(seed).shuffle(blocks)
    payloads = [request.encode() for block in blocks for request in block]
    assert len(set(payloads)) == distinct
    found = sum(answer(*payload.split(b" ", 1)) not in NEGATIVE.values() for payload in payloads)
    return payloads, found / len(payloads)


def cold_keys(start: int, count: int) -> list[bytes]:
    return [f"mailbox {user_address(COLD_BASE + i)}".encode() for i in range(start, start + count)]


def write(path: str, payloads: list[bytes]) -> None:
    """The load generator's request file: the netstrings, back to back."""
    with open(path, "wb") as file:
        file.write(b"".join(netstring(payload) for payload in payloads))
