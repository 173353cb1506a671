"""What a cached page is keyed by: the URL it was asked for, and the session it read.

The route key is the URL (:func:`route_key`): scheme and ``Host`` (a page that shows its
own URL must never reach a request that sent another ``Host``), where the app is mounted,
then ``key_prefix`` or the path, re-encoded (the server decodes ``%3F`` to ``?``: ``/a%3Fb``
must not land where ``/a?b`` reads), then the query's parts, sorted by name. The fast
path finds pages by the raw :data:`Location` of a request instead, which it builds
without formatting.

A page whose view read the session varies on the session's *contents*, not only on the
``Cookie`` header: a server-side session changes under the very same cookie (a logout
that leaves other keys, a revoked session, a new cart). Their digest reaches the
``Vary`` machinery of :mod:`tiered_cache._response_entry` as the pseudo-header
:data:`~tiered_cache._response_entry.SESSION_VARY`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import quote, unquote_plus

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" error handler
from flask.globals import request_ctx
from flask.sessions import session_json_serializer

from ._response_entry import SESSION_ENVIRON, SESSION_VARY

USER_KEY: Final = "user_id"
"""The session key naming the user, for ``per_user``; ``tc.sessions.login`` sets it."""
KEY_PREFIX: Final = "tc.route:"
"""Starts every route key (which names a page in logs and tools; pages live in a slot of
their own, :class:`~tiered_cache.keyspace.OwnSpace`, which no user key reaches)."""

Location = tuple[str, str | None, str, str, str]
"""Where a request goes, as the WSGI server gave it: ``wsgi.url_scheme``, ``HTTP_HOST``,
``SCRIPT_NAME``, ``PATH_INFO``, ``QUERY_STRING``. The fast path builds the same tuple."""

# What percent-encoding leaves alone in a key's host, path and query: the characters
# RFC 3986 allows there. Everything else (a "?" or "#" decoded from the path, a "/" in a
# Host header, a NUL, a space, non-ASCII) is encoded, so that no part can pose as
# another or as a key suffix. Most parts need no encoding: a regex says so faster than
# quote() finds it out.
_HOST_SAFE: Final = ":[]"
_PATH_SAFE: Final = "/:@!$&'()*+,;=~"
_QUERY_SAFE: Final = _PATH_SAFE + "?%"
_UNRESERVED: Final = r"A-Za-z0-9\-._"
_HOST_OK: Final = re.compile(f"[{_UNRESERVED}:\\[\\]]*").fullmatch
_PATH_OK: Final = re.compile(f"[{_UNRESERVED}/:@!$&'()*+,;=~]*").fullmatch
_QUERY_OK: Final = re.compile(f"[{_UNRESERVED}/:@!$&'()*+,;=~?%]*").fullmatch


def request_location(environ: Mapping[str, Any]) -> Location:
    """The :data:`Location` of a request."""
    return (
        environ.get("wsgi.url_scheme", "http"),
        environ.get("HTTP_HOST"),
        environ.get("SCRIPT_NAME", ""),
        environ.get("PATH_INFO", ""),
        environ.get("QUERY_STRING", ""),
    )


def route_key(environ: Mapping[str, Any], *, key_prefix: str | None, query_string: bool) -> str:
    """The route key of a request: ``tc.route:`` and the URL it asked for.

    ``scheme://host/path?query``: the path is ``PATH_INFO`` (or ``key_prefix``, after a
    space), after ``SCRIPT_NAME`` and ``|`` when the app is mounted below the root, then
    the query's parts sorted by name (or left out). Host, scheme and mount are always
    part of it, ``key_prefix`` or not: a page that shows them (``url_for``, with
    ``_external=True`` for the first two) must not be served to a request that sent
    another ``Host`` or, behind ``ProxyFix(x_prefix=1)``, another ``X-Forwarded-Prefix``.
    The server decodes ``%3F`` in a path to ``?``; percent-encoding it again keeps
    ``/a%3Fb`` and ``/a?b`` apart.

    The sort is stable and by name as ``request.args`` reads it: ``?a=2&a=1`` is not
    ``?a=1&a=2``, nor is ``?%61=2&a=1`` (``request.args.get("a")`` tells them apart),
    while ``?b=1&a=1`` is ``?a=1&b=1``.
    """
    scheme = environ.get("wsgi.url_scheme", "http")
    # An empty Host is the request's (Flask builds its links with it), never the server's
    # name: that page must not reach the requests that name the server.
    host = (
        environ["HTTP_HOST"]
        if "HTTP_HOST" in environ
        else f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    )
    if scheme not in _SCHEMES:
        scheme = quote(scheme, safe="")
    key = f"{KEY_PREFIX}{scheme}://{_encoded(host.lower(), _HOST_OK, _HOST_SAFE)}"
    script = environ.get("SCRIPT_NAME", "")
    if script:
        # Where the app is mounted, apart from the path within it: /b of an app at /a is
        # not the app's own /a/b (a forwarded prefix must not plant a page there). "|"
        # and " " are percent-encoded in either part, so nothing else makes them.
        key += _encoded(script, _PATH_OK, _PATH_SAFE) + "|"
    if key_prefix is not None:
        key += " " + key_prefix
    else:
        key += _encoded(environ.get("PATH_INFO", ""), _PATH_OK, _PATH_SAFE) or "/"
    if query_string:
        query = environ.get("QUERY_STRING")
        if query:
            parts = sorted((part for part in query.split("&") if part), key=_query_name)
            key += "?" + _encoded("&".join(parts), _QUERY_OK, _QUERY_SAFE)
    return key


_SCHEMES: Final = frozenset({"http", "https"})


def _query_name(part: str) -> str:
    """The name of a query part as ``request.args`` reads it: werkzeug decodes the query
    as UTF-8, then each name as ``parse_qsl`` does, leaving invalid bytes encoded. Parts
    whose names it reads alike must sort alike (``%61`` and ``a``, ``+`` and ``%20``), or
    a stable sort could swap the values of one name."""
    name = part.partition("=")[0]
    if name.isascii() and "%" not in name and "+" not in name:
        return name  # what werkzeug reads it as, without the work
    try:
        text = name.encode("latin-1").decode()
    except UnicodeError:  # werkzeug cannot read such a query: request.args raises
        return name
    return unquote_plus(text, errors="werkzeug.url_quote")


def _encoded(text: str, ok: Callable[[str], object], safe: str) -> str:
    """``text`` percent-encoded but for ``safe`` (and unreserved) characters.

    A WSGI string holds the request's bytes, one character each (PEP 3333): they are
    encoded as those bytes, so a raw byte and its own ``%XX`` meet (the server and
    werkzeug decode both alike), and never as the UTF-8 of each character, which would
    make the raw bytes of ``é`` (``\xc3\xa9``) read as ``%C3%83%C2%A9``, a query
    that someone else can send as it is.
    """
    if ok(text):
        return text
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:  # not a WSGI string (a hand-built environ): its UTF-8
        raw = text.encode("utf-8", "surrogatepass")
    return quote(raw, safe=safe)


def current_session() -> Any:
    """This request's session as Flask opened it (reading the attribute marks nothing)."""
    return getattr(request_ctx, "_session", None)


@contextlib.contextmanager
def unmarked(session: Any) -> Iterator[Any]:
    """Read ``session`` without leaving it marked accessed: these reads are ours, not
    the view's (the page would vary on Cookie for them, and a session would slide)."""
    accessed = getattr(session, "accessed", None)
    try:
        yield session
    finally:
        if accessed is not None:
            session.accessed = accessed


def session_user() -> str:
    """The session's user, for the key of a ``per_user`` page."""
    session = current_session()
    if session is None:
        return "None"
    with unmarked(session):
        return repr(session.get(USER_KEY))


def session_before() -> str | None:
    """Before a view runs: None when the session is unchanged so far, else its digest
    (a ``before_request`` hook changed it; the view is judged by what it changes)."""
    session = current_session()
    if session is None or not getattr(session, "modified", True):
        return None
    return session_digest() or ""


def session_after(before: str | None) -> str | None:
    """After a view read the session: its digest, or None when the view changed it."""
    digest = session_digest()
    if getattr(current_session(), "modified", True) and (before is None or before != digest):
        return None
    return digest


def digest_session_for(names: tuple[str, ...], environ: MutableMapping[str, Any]) -> None:
    """Put the session's digest in ``environ`` when a page or index varies on it."""
    if SESSION_VARY in names and SESSION_ENVIRON not in environ:
        # A session without a digest matches no page: a value no page was stored for.
        environ[SESSION_ENVIRON] = session_digest() or uuid.uuid4().hex


def session_digest() -> str | None:
    """A digest of the session's contents, read without marking it used.

    A page that read the session is keyed by it, not only by the ``Cookie`` header: a
    server-side session changes (logout, a revoked session, a new cart) under the very
    same cookie. None when the contents do not serialize to JSON (such a page is not
    stored, and a request with such a session matches no page).
    """
    session = current_session()
    if session is None:
        return "no session"
    with unmarked(session):
        data = dict(session.items())
    try:
        tagged = session_json_serializer.tag(data)
        text = json.dumps(tagged, sort_keys=True, separators=(",", ":"))
    # RecursionError: contents nested deeper than the tagger can follow (msgpack and
    # json decode deeper): no digest, like contents that do not serialize.
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
