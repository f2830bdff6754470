"""The in-process lookup cache: a request's reply is served only by an entry that answers it."""

from __future__ import annotations

import gc

from helpers import netstring
from hypothesis import given
from hypothesis import strategies as st

from adapter.cache import Entry, Freshness
from adapter.lookup_cache import LookupCache, request_key
from adapter.protocols.socketmap import MAX_REPLY_PAYLOAD
from adapter.userli import MAPS, NOT_FOUND, Found, NotFound

POLICY = Freshness(ttl=60, negative_ttl=60, stale_ttl=3600)


def entry(map_name: str, answer: Found | NotFound, now: float = 0.0) -> Entry[Found | NotFound]:
    return POLICY.entry(map_name, answer, now)


def test_a_fresh_entry_answers_its_own_request() -> None:
    cache = LookupCache(10)
    cache.put("alias", "a@example.org", entry("alias", Found(("b@example.org", "c@example.org"))))
    cache.put("mailbox", "a@example.org", entry("mailbox", NOT_FOUND))
    assert cache.reply_now(b"alias a@example.org", 1.0) == (
        netstring(b"OK b@example.org,c@example.org"),
        "alias",
        "success",
    )
    assert cache.reply_now(b"mailbox a@example.org", 1.0) == (netstring(b"NOTFOUND "), "mailbox", "notfound")
    assert cache.reply_now(b"senders a@example.org", 1.0) is None


def test_an_entry_no_longer_fresh_answers_only_the_slow_path() -> None:
    cache = LookupCache(10)
    cache.put("alias", "a@example.org", entry("alias", Found(("b@example.org",))))
    assert cache.reply_now(b"alias a@example.org", 60.0) is None
    stale = cache.get("alias", "a@example.org", 60.0)  # usable stale, for an outage
    assert stale == Entry(Found(("b@example.org",)), 60.0, 3600.0)
    assert cache.get("alias", "a@example.org", 3600.0) is None  # and then gone
    assert len(cache) == 0


def test_a_replaced_answer_replaces_the_reply() -> None:
    cache = LookupCache(10)
    cache.put("mailbox", "a@example.org", entry("mailbox", Found(("1",))))
    cache.put("mailbox", "a@example.org", entry("mailbox", NOT_FOUND))
    assert cache.reply_now(b"mailbox a@example.org", 1.0) == (netstring(b"NOTFOUND "), "mailbox", "notfound")
    cache.delete("mailbox", "a@example.org")
    assert cache.reply_now(b"mailbox a@example.org", 1.0) is None


def test_a_reply_too_large_for_postfix_is_never_served_as_is() -> None:
    cache = LookupCache(10)
    values = tuple(f"user{i:06d}@example.org" for i in range(MAX_REPLY_PAYLOAD // 20))
    cache.put("alias", "list@example.org", entry("alias", Found(values)))
    assert cache.reply_now(b"alias list@example.org", 1.0) is None  # Lookups answers PERM
    assert cache.get("alias", "list@example.org", 1.0) == entry("alias", Found(values))


def test_entries_give_the_garbage_collector_nothing_to_walk() -> None:
    cache = LookupCache(100_000)
    answer = Found(("dest@example.org",))
    gc.collect()
    tracked = len(gc.get_objects())
    for i in range(100_000):
        cache.put("alias", f"user{i}@example.org", entry("alias", answer))
    gc.collect()
    assert len(cache) == 100_000
    assert len(gc.get_objects()) - tracked < 100  # not one per entry


KEYS = st.text(alphabet='abAB+-._@"', min_size=1, max_size=12)
ANSWERS = st.sampled_from([NOT_FOUND, Found(("x@example.org",)), None])  # None: not cached


@given(
    map_name=st.sampled_from(MAPS),
    raw=KEYS,
    delimiters=st.sampled_from(["", "+", "+-"]),
    answers=st.lists(ANSWERS, min_size=2, max_size=2),
    cached_rules=st.sampled_from(["", "+", "+-"]),
)
def test_a_request_is_served_from_the_cache_only_as_its_keys_would_answer(
    map_name: str, raw: str, delimiters: str, answers: list[Found | NotFound | None], cached_rules: str
) -> None:
    """Whatever is cached under whatever key: a direct reply is the one the request's own keys,
    asked in order, would give (Lookups: the first answer that is not NOTFOUND)."""
    cache = LookupCache(100, delimiters)
    keys = cache.keys(map_name, raw)
    other = LookupCache(100, cached_rules).keys(map_name, raw)  # keys that rules elsewhere would ask
    for key, answer in zip((*keys, *other), answers * 2, strict=False):
        if answer is not None:
            cache.put(map_name, key, entry(map_name, answer))
    hit = cache.reply_now(f"{map_name} {raw}".encode(), 1.0)
    if hit is None:
        return
    expected: Found | NotFound = NOT_FOUND
    for key in keys:
        cached = cache.get(map_name, key, 1.0)
        assert cached is not None  # a direct reply needs every key it stands for to be cached
        expected = cached.answer
        if isinstance(expected, Found):
            break
    body = b"OK " + ",".join(expected.values).encode() if isinstance(expected, Found) else b"NOTFOUND "
    assert hit[0] == netstring(body)
    assert request_key(map_name, keys[0]) == f"{map_name} {raw}".encode()
