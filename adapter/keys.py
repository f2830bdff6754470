"""Canonical lookup keys, and which keys are worth asking userli about at all.

userli caches every answer for 24 h under the exact path parameter and invalidates by the stored
lowercase value, so a key must be canonical (trimmed, lowercased) before it reaches a cache or
the API. Keys that can never name a userli address are answered NOTFOUND locally: that is safe
exactly because userli would have said "no" too (its local parts are ``[a-z0-9._-]``).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["canonical", "lookup_keys"]

_LOCAL_PART = re.compile(r"[a-z0-9._-]+")
# Hostname labels: ASCII letters, digits, '-', '_' or any non-ASCII, non-space character (IDN
# typed by an admin). No empty label, so '.' and '..' (URL dot segments) can never pass.
_DOMAIN = re.compile(r"(?:[a-z0-9_-]|[^\x00-\x7f\s\ufffd])+(?:\.(?:[a-z0-9_-]|[^\x00-\x7f\s\ufffd])+)*")


def canonical(raw: str) -> str:
    """Trim, drop control and invisible format characters (zero-width space, BOM, ...), lowercase."""
    if not (raw.isascii() and raw.isprintable()):
        raw = "".join(c for c in raw if unicodedata.category(c) not in ("Cc", "Cf"))
    return raw.strip().lower()


def strip_extension(local: str, delimiters: str) -> str:
    """Cut the address extension at the first delimiter character (Postfix recipient_delimiter)."""
    cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
    return local[:cut] if cut > 0 else local


def lookup_keys(raw: str, delimiters: str = "", *, domain_only: bool = False) -> tuple[str, ...]:
    """The canonical keys to ask userli, in order; empty when the key can never exist.

    An address with an extension is asked in full first and, only if that is not found, without
    the extension: Postfix's own semantics for ``user+tag@domain``. When the full address could
    only be invalid because of its extension, only the stripped form is asked.
    A key without ``@`` is a domain (Postfix also asks the alias map for bare domains).
    """
    key = canonical(raw)
    local, at, domain = key.partition("@")
    if not at:
        return (key,) if _DOMAIN.fullmatch(key) else ()
    if domain_only or not _DOMAIN.fullmatch(domain):  # also: a second '@', [address literal]
        return ()
    keys = []
    if _LOCAL_PART.fullmatch(local):
        keys.append(key)
    base = strip_extension(local, delimiters)
    if base != local and _LOCAL_PART.fullmatch(base):
        keys.append(f"{base}@{domain}")
    return tuple(keys)
