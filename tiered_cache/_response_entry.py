"""Cached responses: how a page is stored in the cache, read back and matched (``Vary``).

A page is stored as one *string*: the serializer-agnostic encoding of the whole response
(status line, headers, body, ETag, time stored, the ``Vary`` names and a digest of the
request values it was stored for, and whether the route is public). A string because L1
hands strings out as they are, with no copy-on-read; a :class:`PageDecoder` then turns
each distinct string into a prebuilt :class:`Page` once per process, so a hit re-parses
nothing. Bodies that are not UTF-8 are stored in base64 (json has no bytes).

A route key whose responses carry ``Vary`` holds an *index* instead: the sorted header
names seen on its responses. Each page then lives under a *variant* key, the route key
plus a digest of the request's values of those names. The page itself also carries the
digest of the values of its own ``Vary`` names, checked on every hit, so a page is only
ever served to a request that matches it, whatever happened to the index meanwhile.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from werkzeug.http import parse_etags

ENTRY: Final = "E"
INDEX: Final = "I"
_FORMAT: Final = 1

#: Headers a 304 carries from the page it stands for (RFC 9110, section 15.4.5).
NOT_MODIFIED_HEADERS: Final = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary"}
)
#: Headers a page does not store: they describe one delivery, and hits set their own
#: (the rate limit figures of a hit through Flask are the hit's, set by ``tc.limit``).
UNSTORED_HEADERS: Final = frozenset(
    {
        "x-cache",
        "age",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
    }
)

_AGE_ZERO: Final = ("Age", "0")

SESSION_VARY: Final = "(session)"
"""The ``Vary`` name of a page whose view read the session: it varies on the session's
contents, which the request context puts under :data:`SESSION_ENVIRON` (parentheses are
not allowed in a header name, so no request header can pose as it)."""
SESSION_ENVIRON: Final = "tiered_cache.session"

# The WSGI environ keys of the names that are not HTTP_ + the header's name.
_ENVIRON_KEYS: Final = {
    "content-type": "CONTENT_TYPE",
    "content-length": "CONTENT_LENGTH",
    SESSION_VARY: SESSION_ENVIRON,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """A stored response, prebuilt for serving."""

    status: str
    """The status line, e.g. ``"200 OK"``."""
    headers: tuple[tuple[str, str], ...]
    not_modified: tuple[tuple[str, str], ...]
    """The headers of a 304 answered for this page."""
    body: bytes
    etag: str | None
    """The unquoted entity tag (weakness is irrelevant to If-None-Match's comparison)."""
    stored: float
    """Epoch seconds."""
    vary: tuple[str, ...]
    vary_digest: str
    public: bool
    fast: bool
    """Whether the WSGI fast path may serve it: public, and not varying on the session
    (which only a request context can read)."""

    @property
    def status_code(self) -> int:
        """The status code."""
        return int(self.status.split(None, 1)[0])

    def age(self, now: float) -> tuple[str, str]:
        """The ``Age`` header of a hit at epoch seconds ``now`` (0 if the clock went back)."""
        # Not max(0, ...): CPython 3.11's max() parses keywords on every call, which
        # cost more than the rest of this method.
        seconds = int(now - self.stored)
        return ("Age", str(seconds)) if seconds > 0 else _AGE_ZERO

    def not_modified_for(self, environ: Mapping[str, Any]) -> bool:
        """Whether the request's ``If-None-Match`` matches this page's ETag: the
        request gets a 304."""
        return none_match(environ, self.etag)

    def matches(self, environ: Mapping[str, Any]) -> bool:
        """Tell whether the request's values of this page's ``Vary`` names are its own."""
        return not self.vary or vary_digest(self.vary, environ) == self.vary_digest


def none_match(environ: Mapping[str, Any], etag: str | None) -> bool:
    """Whether the request's ``If-None-Match`` matches ``etag`` (unquoted; weak
    comparison, RFC 9110 section 13.1.2), so that it gets a 304."""
    header = environ.get("HTTP_IF_NONE_MATCH")
    if not header or etag is None:
        return False
    return parse_etags(header).contains_weak(etag)


def environ_header(environ: Mapping[str, Any], name: str) -> str | None:
    """The value of request header ``name`` (lower case) in a WSGI environ, stripped;
    None when the request does not send it."""
    key = _ENVIRON_KEYS.get(name) or "HTTP_" + name.upper().replace("-", "_")
    value = environ.get(key)
    return value.strip() if isinstance(value, str) else None


def vary_digest(names: tuple[str, ...], environ: Mapping[str, Any]) -> str:
    """A digest of the request's values of the header ``names`` (lower case, sorted).

    A header the request does not send is told apart from one sent empty: RFC 9111,
    section 4.1, matches an absent header only with an absent one.
    """
    if not names:
        return ""
    fields = []
    for name in names:
        value = environ_header(environ, name)
        fields.append(f"{name}\x02" if value is None else f"{name}\x01{value}")
    text = "\x00".join(fields)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def variant_key(key: str, names: tuple[str, ...], environ: Mapping[str, Any]) -> str:
    """The key of the variant of route key ``key`` that this request selects."""
    return f"{key}\x00v={vary_digest(names, environ)}"


def vary_names(headers: Iterable[str]) -> tuple[str, ...]:
    """Normalize header names: lower case, stripped, unique, sorted."""
    return tuple(sorted({name.strip().lower() for name in headers if name.strip()}))


def encode_index(names: tuple[str, ...]) -> str:
    """The stored form of a route key's index of ``Vary`` names."""
    return INDEX + json.dumps(names, separators=(",", ":"))


def encode_page(
    *,
    status: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    etag: str | None,
    stored: float,
    vary: tuple[str, ...],
    digest: str,
    public: bool,
) -> str:
    """The stored form of a page.

    Hits send what is stored as it is, so it is stored as it must be sent: with a
    ``Content-Length``, except a 1xx, 204 or 304, which has neither body nor length
    (RFC 9110 6.4.1, 8.6), whatever the view put in them.
    """
    kept = [[k, v] for k, v in headers if k.lower() not in UNSTORED_HEADERS]
    code = int(status.split(None, 1)[0])
    if code < 200 or code in (204, 304):
        body = b""
        kept = [[k, v] for k, v in kept if k.lower() != "content-length"]
    elif not any(k.lower() == "content-length" for k, _ in kept):
        kept.append(["Content-Length", str(len(body))])
    try:
        text, b64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, b64 = base64.b64encode(body).decode("ascii"), True
    fields = [_FORMAT, status, kept, text, b64, etag, stored, list(vary), digest, bool(public)]
    return ENTRY + json.dumps(fields, separators=(",", ":"))


_STATUS: Final = re.compile(r"[1-5][0-9]{2} [^\x00-\x1f\x7f]*")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
"""What a hit may send: a status line, header names that are tokens and values without
control characters (RFC 9110 5.5), as ``encode_page`` stored them. Anything else in a
stored page is tampering, and the page a miss."""


def sendable(status: Any, headers: Iterable[tuple[Any, Any]]) -> bool:
    """Whether a hit may send this status line and these headers as they are. A page
    that fails it is not stored (it would read back as a miss, and be stored again, on
    every request), and a stored one that fails it was tampered with."""
    if not (type(status) is str and _STATUS.fullmatch(status)):
        return False
    return all(_is_field(name, value) for name, value in headers)


def _decode_page(data: str) -> Page:
    fmt, status, headers, text, b64, etag, stored, vary, digest, public = json.loads(data)
    if fmt != _FORMAT:
        raise ValueError(f"page format {fmt!r}")
    pairs = tuple((k, v) for k, v in headers)
    if not sendable(status, pairs):
        raise ValueError("not a status line and header lines a hit may send")
    if not (
        _all_str(vary)
        and type(text) is str
        and type(digest) is str
        and (etag is None or type(etag) is str)
        and type(b64) is bool
        and type(public) is bool
        and type(stored) in (int, float)
        and math.isfinite(stored)
    ):
        raise ValueError("not a page")
    body = base64.b64decode(text, validate=True) if b64 else text.encode("utf-8")
    return Page(
        status=status,
        headers=pairs,
        not_modified=tuple(p for p in pairs if p[0].lower() in NOT_MODIFIED_HEADERS),
        body=body,
        etag=etag,
        stored=float(stored),
        vary=tuple(vary),
        vary_digest=digest,
        public=public,
        fast=public and SESSION_VARY not in vary,
    )


def _is_field(name: Any, value: Any) -> bool:
    return (
        type(name) is str
        and type(value) is str
        and _TOKEN.fullmatch(name) is not None
        and _FIELD_VALUE.fullmatch(value) is not None
    )


def _all_str(names: Any) -> bool:
    return type(names) is list and all(type(name) is str for name in names)


def decode(text: str) -> Page | tuple[str, ...] | None:
    """A stored page or index; None for anything else (a foreign or older value)."""
    try:
        if text.startswith(ENTRY):
            return _decode_page(text[1:])
        if text.startswith(INDEX):
            names = json.loads(text[1:])
            return tuple(names) if _all_str(names) else None
    # RecursionError: nesting deeper than json can follow.
    except (ValueError, TypeError, UnicodeError, RecursionError):
        pass
    return None


class PageDecoder:
    """Decode stored strings once per process: hits look the prebuilt page up by its text.

    A pure memo (the same text always means the same page), so it needs no invalidation:
    L1 decides whether a text may be served, this only saves re-parsing it. The lookup is
    cheap because L1 hands out the very string object it holds, whose hash is cached and
    whose equality test stops at identity. Bounded in entries and in size, each entry
    counted as its text's length: what the decoded page adds (its body), since the text
    itself is the one L1 holds while the page is hot. A text bigger than the whole
    budget is decoded every time. The oldest entries go first.

    :param max_items: how many decoded strings to keep.
    :param max_bytes: about how much memory they may hold.
    """

    def __init__(self, max_items: int = 1024, max_bytes: int = 16 << 20) -> None:
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._memo: dict[str, Page | tuple[str, ...] | None] = {}
        self._lock = threading.Lock()  # for writers; readers go through known, lock-free
        self.bytes = 0
        """What the memo holds now, counted as it is bounded."""
        self.known: Callable[[str], Page | tuple[str, ...] | None] = self._memo.get
        """The page or index already decoded from string ``text``, else None. No decoding
        and no type check: the fast path's lookup, one C call (pass strings only)."""

    def get(self, text: Any) -> Page | tuple[str, ...] | None:
        """The page or index stored as ``text``; None when ``text`` is neither."""
        if type(text) is not str:
            return None
        memo = self._memo
        try:
            return memo[text]
        except KeyError:
            pass
        found = decode(text)
        size = len(text)
        if size > self._max_bytes:
            return found
        with self._lock:
            if text not in memo:
                memo[text] = found
                self.bytes += size
                while len(memo) > self._max_items or self.bytes > self._max_bytes:
                    oldest = next(iter(memo))
                    del memo[oldest]
                    self.bytes -= len(oldest)
        return found
