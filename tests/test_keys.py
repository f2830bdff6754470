"""Key canonicalisation and the keys that are answered NOTFOUND without asking userli."""

from __future__ import annotations

import pytest

from adapter.keys import canonical, lookup_keys, strip_extension


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
        # extensions: full address first, then without the extension
        ("user+tag@example.org", "+", ("user@example.org",)),  # '+' is never valid in userli
        ("user-tag@example.org", "-", ("user-tag@example.org", "user@example.org")),
        ("user+a-b@example.org", "+-", ("user@example.org",)),
        ("user-a+b@example.org", "+-", ("user@example.org",)),
        ("user.tag@example.org", "+.", ("user.tag@example.org", "user@example.org")),
        ("+tag@example.org", "+", ()),  # nothing before the delimiter
        ("user+tag@example.org", "", ()),  # no delimiter configured: '+' can never exist
        ("user@example.org", "+", ("user@example.org",)),
        # keys that can never be a userli address
        ("", "", ()),
        ("   ", "", ()),
        ("*", "", ()),
        ("@example.org", "", ()),
        ("user@", "", ()),
        ("a@b@example.org", "", ()),
        ("user@[192.0.2.1]", "", ()),
        ("user@[ipv6:2001:db8::1]", "", ()),
        ('"john doe"@example.org', "", ()),
        ('"john"@example.org', "", ()),
        ("user/x@example.org", "", ()),
        ("user@example.org/x", "", ()),
        ("../admin", "", ()),
        (".", "", ()),
        ("..", "", ()),
        ("user@..", "", ()),
        ("user@example..org", "", ()),
        ("user@.example.org", "", ()),
        ("user?x=1@example.org", "", ()),
        ("user#x@example.org", "", ()),
        ("user%2f@example.org", "", ()),
        ("example.org?x", "", ()),
        ("example.org#x", "", ()),
        ("exa mple.org", "", ()),
        ("üser@example.org", "", ()),  # userli local parts are ASCII
        ("srs0=abcd=xy=example.com=user@example.org", "", ()),
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
