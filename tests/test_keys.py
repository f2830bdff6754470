"""Key canonicalisation and the keys that are answered NOTFOUND without asking userli."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.keys import address_key, canonical, lookup_keys, strip_extension


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("User@Example.ORG", "user@example.org"),
        ("  user@example.org \t", "user@example.org"),
        ("\u200buser@example.org\ufeff", "user@example.org"),  # zero-width space, BOM
        ("us\u200ber@example.org", "user@example.org"),
        ("user@example.org\x00\x07", "user@example.org"),  # control characters
        ("\x1fuser@example.org", "user@example.org"),
        ("ÜSER@BÜCHER.DE", "üser@bücher.de"),
    ],
)
def test_canonical(raw: str, expected: str) -> None:
    assert canonical(raw) == expected


@pytest.mark.parametrize(
    ("raw", "delimiters", "expected"),
    [
        # plain addresses and domains
        ("user@example.org", "", ("user@example.org",)),
        ("First.Last@Example.org", "", ("first.last@example.org",)),
        ("a_b-c.d@sub.example.org", "", ("a_b-c.d@sub.example.org",)),
        ("example.org", "", ("example.org",)),  # Postfix asks the alias map for bare domains
        ("Example.ORG", "", ("example.org",)),
        ("bücher.de", "", ("bücher.de",)),
        # admin-created addresses: any RFC 5321 local part is asked about (userli-api.md, "Keys")
        ("First+Last@Example.org", "", ("first+last@example.org",)),
        ("o'brien@example.org", "", ("o'brien@example.org",)),
        ("user?x=1@example.org", "", ("user?x=1@example.org",)),  # percent-encoded in the path
        ("user#x@example.org", "", ("user#x@example.org",)),
        ("user%2f@example.org", "", ("user%2f@example.org",)),
        ("a!b$c&d*e=f^g`h{i|j}k~l@example.org", "", ("a!b$c&d*e=f^g`h{i|j}k~l@example.org",)),
        ("srs0=abcd=xy=example.com=user@example.org", "", ("srs0=abcd=xy=example.com=user@example.org",)),
        ("üser@example.org", "", ("üser@example.org",)),  # RFC 6531
        (".john@example.org", "", (".john@example.org",)),  # userli's own form lets these through
        ("john..doe@example.org", "", ("john..doe@example.org",)),
        # quoted local parts: the unquoted form when it means the same mailbox
        ('"john"@example.org', "", ("john@example.org",)),
        ('"first+last"@example.org', "", ("first+last@example.org",)),
        ('"john doe"@example.org', "", ('"john doe"@example.org',)),
        ('"a\\"b"@example.org', "", ('"a\\"b"@example.org',)),
        # extensions: full address first, then without the extension (Postfix's semantics)
        ("user+tag@example.org", "+", ("user+tag@example.org", "user@example.org")),
        ("user-tag@example.org", "-", ("user-tag@example.org", "user@example.org")),
        ("john-doe@example.org", "-", ("john-doe@example.org", "john@example.org")),
        ("user+a-b@example.org", "+-", ("user+a-b@example.org", "user@example.org")),
        ("user-a+b@example.org", "+-", ("user-a+b@example.org", "user@example.org")),
        ("user.tag@example.org", "+.", ("user.tag@example.org", "user@example.org")),
        ("+tag@example.org", "+", ("+tag@example.org",)),  # nothing before the delimiter
        ("user+tag@example.org", "", ("user+tag@example.org",)),  # no delimiter: one address
        ("user@example.org", "+", ("user@example.org",)),
        ('"john doe+x"@example.org', "+", ('"john doe+x"@example.org',)),
        # keys that can never be a userli address, or would change the request path
        ("", "", ()),
        ("   ", "", ()),
        ("*", "", ()),
        ("@example.org", "", ()),
        ("user@", "", ()),
        ("a@b@example.org", "", ()),
        ('"a@b"@example.org', "", ()),  # more than one '@'
        ("user@[192.0.2.1]", "", ()),
        ("user@[ipv6:2001:db8::1]", "", ()),
        ("user/x@example.org", "", ()),
        ('"user/x"@example.org', "", ()),
        ("user@example.org/x", "", ()),
        ("../admin", "", ()),
        (".", "", ()),
        ("..", "", ()),
        ("user@..", "", ()),
        ("user@example..org", "", ()),
        ("user@.example.org", "", ()),
        ("john doe@example.org", "", ()),  # a space outside quotes
        ('"unterminated@example.org', "", ()),
        ('"bad"quote"@example.org', "", ()),
        ("(comment)user@example.org", "", ()),
        ("example.org?x", "", ()),
        ("example.org#x", "", ()),
        ("exa mple.org", "", ()),
        ("x" * 250 + "@example.org", "", ()),  # longer than any stored address
        ("user@exa\ufffdmple.org", "", ()),  # undecodable bytes on the wire
    ],
)
def test_lookup_keys(raw: str, delimiters: str, expected: tuple[str, ...]) -> None:
    assert lookup_keys(raw, delimiters) == expected


def test_domain_map_only_takes_domains() -> None:
    assert lookup_keys("Example.org", domain_only=True) == ("example.org",)
    assert lookup_keys("user@example.org", domain_only=True) == ()


@pytest.mark.parametrize(
    ("local", "delimiters", "expected"),
    [
        ("user+tag", "+", "user"),
        ("user+a+b", "+", "user"),
        ("user-a+b", "+-", "user"),
        ("+x", "+", "+x"),
        ("u", "+", "u"),
    ],
)
def test_strip_extension(local: str, delimiters: str, expected: str) -> None:
    assert strip_extension(local, delimiters) == expected


@given(st.text(max_size=80))
def test_no_key_can_reach_another_path(raw: str) -> None:
    for key in lookup_keys(raw, "+-"):
        segment = quote(key, safe="@")
        assert "/" not in segment and "?" not in segment and "#" not in segment
        assert segment not in (".", "..") and key.strip() == key and key == key.lower()


@given(st.text(max_size=40))
def test_address_key_is_idempotent(raw: str) -> None:
    key = address_key(raw)
    if key is not None:
        assert address_key(key) == key
