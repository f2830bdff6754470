"""Canonical lookup keys, and which keys are worth asking userli about at all.

userli caches every answer for 24 h under the exact path parameter and invalidates by the stored
lowercase value, so a key must be canonical (trimmed, lowercased) before it reaches a cache or
the API.

Every syntactically valid address is asked about. userli's registration form only creates local
parts of ``a-z 0-9 . _ -``, but an admin may create any address (``first+last@example.org``), so
a character rule would bounce real users' mail. Only what can never be a userli address, or would
change the request path, is answered NOTFOUND locally (``../shared/reference/userli-api.md``,
"Keys"): the empty key, ``*``, ``.``/``..``, address literals (``user@[192.0.2.1]``), more than
one ``@``, a ``/`` (userli's route parameters never match one), broken quoting, and keys longer
than any address can be.

A local part is an RFC 5321 dot-string (RFC 6531: UTF-8 allowed) -- dots anywhere, since
userli's own form lets ``.john`` and ``john..doe`` through -- or a quoted string. A quoted
string that is also a dot-string means the same mailbox unquoted (``"john"@x`` is ``john@x``)
and is asked in that form.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_ADDRESS", "address_key", "canonical", "lookup_keys", "map_keys", "strip_extension"]

MAX_ADDRESS = 255  # userli stores addresses in a 255-character column; RFC 5321 allows 254

# RFC 5321 atext (after lowercasing), RFC 6531 UTF-8, and '.'; never '/' (see above), nor U+FFFD:
# bytes that were not UTF-8 on the wire can match no address userli stores.
_UTF8 = "\u0080-\ufffc\ufffe-\U0010ffff"
_DOT_STRING = re.compile(rf"[a-z0-9!#$%&'*+\-=?^_`{{|}}~.{_UTF8}]+")
# RFC 5321 Quoted-string: qtext (printable ASCII but '"' and '\', or UTF-8) and quoted pairs.
_QUOTED = re.compile(rf'"((?:[ !#-\[\]-~{_UTF8}]|\\[ -~])*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")
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


def _local_part(local: str) -> str | None:
    """The local part as userli would be asked about it, or None when it is not one."""
    if _DOT_STRING.fullmatch(local):
        return local
    quoted = _QUOTED.fullmatch(local)
    if quoted is None or "/" in local:
        return None
    inner = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
    return inner if _DOT_STRING.fullmatch(inner) else local


def address_key(raw: str) -> str | None:
    """The canonical form of an address (``local@domain``), or None if it can never be one."""
    key = canonical(raw)
    local, at, domain = key.rpartition("@")
    if not at or len(key) > MAX_ADDRESS or not _DOMAIN.fullmatch(domain):  # also: [address literal]
        return None
    local_key = _local_part(local)  # a second '@' only passes inside quotes: refused below
    if local_key is None or "@" in local_key:
        return None
    return f"{local_key}@{domain}"


def lookup_keys(raw: str, delimiters: str = "", *, domain_only: bool = False) -> tuple[str, ...]:
    """The canonical keys to ask userli, in order; empty when the key can never exist.

    An address with an extension is asked in full first and, only if that is not found, without
    the extension: Postfix's own semantics for ``user+tag@domain``. A key without ``@`` is a
    domain (Postfix also asks the alias map for bare domains).
    """
    if "@" not in raw:
        key = canonical(raw)
        return (key,) if len(key) <= MAX_ADDRESS and _DOMAIN.fullmatch(key) else ()
    key = None if domain_only else address_key(raw)
    if key is None:
        return ()
    local, _, domain = key.rpartition("@")
    base = local if local.startswith('"') else strip_extension(local, delimiters)
    return (key,) if base == local else (key, f"{base}@{domain}")


def map_keys(map_name: str, raw: str, delimiters: str = "") -> tuple[str, ...]:
    """``lookup_keys`` for a request to a map: the domain map takes domains only."""
    return lookup_keys(raw, delimiters, domain_only=map_name == "domain")
