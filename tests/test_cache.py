"""The cache building blocks: freshness policy, the bounded LRU, the Redis value format."""

from __future__ import annotations

import random
import string

from adapter.cache import Freshness, MemoryCache, decode, encode
from adapter.userli import NOT_FOUND, Found

OK = Found(("a@example.org", "b@example.org"))
POLICY = Freshness(ttl=300, negative_ttl=30, stale_ttl=86_400)


def test_positive_entry_times() -> None:
    entry = POLICY.entry("mailbox", OK, now=1000.0)
    assert (entry.fresh_until, entry.stale_until) == (1300.0, 1000.0 + 86_400)


def test_positive_entry_from_an_older_answer_with_a_cap() -> None:
    entry = POLICY.entry("mailbox", OK, now=1000.0, age=100.0, fresh_cap=10.0)
    assert (entry.fresh_until, entry.stale_until) == (1010.0, 1000.0 + 86_300)
    entry = POLICY.entry("mailbox", OK, now=1000.0, age=295.0, fresh_cap=10.0)
    assert entry.fresh_until == 1005.0  # never fresher than the shared answer itself


def test_notfound_that_rejects_mail_is_never_stale() -> None:
    for map_name in ("mailbox", "domain", "senders"):
        entry = POLICY.entry(map_name, NOT_FOUND, now=1000.0)
        assert (entry.fresh_until, entry.stale_until) == (1030.0, 1000.0), map_name


def test_alias_notfound_may_stand_in_during_an_outage() -> None:
    entry = POLICY.entry("alias", NOT_FOUND, now=1000.0)
    assert (entry.fresh_until, entry.stale_until) == (1030.0, 1000.0 + 86_400)


def test_keep_for() -> None:
    assert POLICY.keep_for("mailbox", OK) == 86_400
    assert POLICY.keep_for("mailbox", NOT_FOUND) == 30
    assert POLICY.keep_for("alias", NOT_FOUND) == 86_400
    no_stale = Freshness(ttl=300, negative_ttl=0, stale_ttl=0)
    assert no_stale.keep_for("mailbox", OK) == 300
    assert no_stale.keep_for("mailbox", NOT_FOUND) == 0
    assert no_stale.keep_for("alias", NOT_FOUND) == 0
    assert Freshness(ttl=300, negative_ttl=0, stale_ttl=3600).keep_for("senders", NOT_FOUND) == 0


def test_memory_cache_drops_entries_that_are_neither_fresh_nor_stale() -> None:
    cache = MemoryCache(10)
    cache.put("k", Freshness(10, 0, 20).entry("mailbox", OK, now=0.0))
    assert cache.get("k", now=5.0) is not None  # fresh
    assert cache.get("k", now=15.0) is not None  # stale but usable
    assert cache.get("k", now=20.0) is None
    assert len(cache) == 0


def test_memory_cache_keeps_the_recently_used_and_drops_the_unused() -> None:
    cache = MemoryCache(2)
    for key in ("a", "b", "c"):  # 'a' and 'b' fill a generation; 'c' turns it into the old one
        cache.put(key, POLICY.entry("mailbox", OK, now=0.0))
    assert cache.get("a", now=1.0) is not None  # used: carried into the young generation
    cache.put("d", POLICY.entry("mailbox", OK, now=1.0))  # the young one is full: a turn
    assert cache.get("b", now=1.0) is None  # never used since: dropped with the old generation
    assert [cache.get(k, now=1.0) is not None for k in ("a", "c", "d")] == [True, True, True]


def test_a_working_set_as_large_as_the_cache_is_kept_whole() -> None:
    cache = MemoryCache(1000)
    keys = [f"mailbox:user{i}@example.org" for i in range(1000)]
    for key in keys:
        cache.put(key, POLICY.entry("mailbox", OK, now=0.0))
    rng = random.Random(3)
    for _ in range(20):  # used over and over, in any order: never a miss
        rng.shuffle(keys)
        assert all(cache.get(key, now=1.0) is not None for key in keys)


def test_a_million_random_keys_keep_the_cache_at_its_bound() -> None:
    cache = MemoryCache(1000)
    rng = random.Random(7)
    entry = POLICY.entry("mailbox", OK, now=0.0)
    alphabet = string.ascii_lowercase + string.digits
    for i in range(1_000_000):
        cache.put(f"mailbox:{''.join(rng.choices(alphabet, k=10))}{i}@example.org", entry)
        if i % 100_000 == 0:
            assert len(cache) <= 2000  # the newest 1000, and at most one older generation
    assert 1000 <= len(cache) <= 2000


def test_redis_value_is_the_socketmap_reply() -> None:
    assert encode(OK) == "OK a@example.org,b@example.org"
    assert encode(Found(("1",))) == "OK 1"
    assert encode(NOT_FOUND) == "NOTFOUND "
    for answer in (OK, Found(("1",)), NOT_FOUND):
        assert decode(encode(answer)) == answer
    for garbage in ("", "OK ", "OK", "NOTFOUND", "TEMP x", "ok a"):
        assert decode(garbage) is None
