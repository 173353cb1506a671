"""``@tc.cached``: whole responses cached in both tiers, shared only where HTTP allows.

How a request to a cached view goes (SPEC section 3):

- Methods other than GET and HEAD run the view untouched. A request with
  ``Authorization`` to a route that is not ``public``, or one for which ``unless()`` is
  true, runs the view and is marked ``X-Cache: BYPASS``; nothing is looked up or stored.
- The key is the URL asked for (:mod:`tiered_cache._page_keys`): scheme and ``Host``,
  then ``key_prefix`` or the path (percent-encoded again, so that ``/a%3Fb`` is not
  ``/a?b``), then the sorted query string when ``query_string``, plus the session's
  user when ``per_user``, in the route's namespace if it has one. Host and scheme are
  always in it: a page that shows its own URL must never reach a request with a forged
  ``Host``. The app is not: every app on the same Redis, prefix and schema version
  shares the pages (that is how workers share them).
- A hit (``HIT-L1`` / ``HIT-L2``) is the stored response with its headers, ``Vary``
  included, plus ``X-Cache`` and ``Age``; with ``etag`` a matching ``If-None-Match`` gets a
  304 built from the page, and the view does not run. HEAD is answered from the GET page.
- A miss runs the view; what is stored is decided on the *final* response, in Flask's
  ``request_finished`` signal (sent by ``finalize_request`` after the ``after_request``
  hooks and after the session interface saved the session and added its ``Set-Cookie``
  and ``Vary: Cookie``). A public signal rather than a wrapped ``process_response``: no
  method of the app is replaced, and it also sees responses made by error handlers.
  Only GET responses are stored (a view may answer HEAD differently), under the
  namespace version the lookup used: a page built before an invalidation of its
  namespace lands where nobody reads. The signal's receiver is connected only while
  misses are in flight (:class:`Routes`).
- Never stored: ``Set-Cookie``; ``Cache-Control`` ``private``, ``no-store`` or
  ``no-cache``; ``Vary: *``; a status outside ``status_codes``; a streamed or
  ``direct_passthrough`` response; a page whose view changed the session. Several
  ``Cache-Control`` or ``Vary`` lines are joined first (werkzeug reads only the first).
  Only 2xx pages get an ETag and answer ``If-None-Match`` (RFC 9110 13.2.1).

Sessions. Whether the view read the session is recorded when the view returns, from the
session's ``accessed`` flag: Flask 3.1 sets it on *every* use of ``flask.session`` (``key
in session`` included), for its cookie sessions and flask-session's alike; a session
object without that flag counts as read. The session interface's own reads while saving
come later and do not count. Reads by ``before_request`` hooks do count (a hook that puts
the user on ``g`` makes the page depend on the session). A page whose view read the
session is stored with ``Vary: Cookie`` and keyed by the request's whole ``Cookie``
header *and* by a digest of the session's contents: a server-side session changes under
the very same cookie (a logout that leaves other keys, a revoked session, a new cart),
and its page must change with it. Such a page is compared in Flask, where the session
is open, never on the fast path; a page whose view changed the session is not stored
(a ``before_request`` hook's changes do not count: hooks run on hits too). A session
whose contents do not serialize to JSON matches no page. ``per_user=True`` keys the page
by ``session.get("user_id")`` (:data:`~tiered_cache._page_keys.USER_KEY`, read without
marking the session accessed) *and* by the Cookie header: the page depends on the
session, so it must vary on Cookie for every cache downstream too, and keying ours the
same way keeps ``Vary`` honest.
Anonymous requests without cookies share one page.

``stale_ttl``: a page past ``timeout`` (and within ``stale_ttl``) is refreshed by the
request that takes the page's cluster-wide flight lock, synchronously (it runs the view:
``MISS``); every other request meanwhile gets the stale page (``STALE``). A request, not
a background thread, so the view runs with its real request context, hooks and session.

Pages are stored as strings, decoded once per process (see
:mod:`tiered_cache._response_entry`). Public routes (without ``per_user`` or ``unless``)
record where their pages live for the WSGI fast path (:mod:`tiered_cache.wsgi`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import re
import threading
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from flask import current_app, request
from flask.signals import request_finished
from werkzeug.datastructures import Headers
from werkzeug.http import generate_etag, parse_list_header, unquote_etag

from ._forks import renew_after_fork
from ._page_keys import (
    Location,
    current_session,
    digest_session_for,
    request_location,
    route_key,
    session_after,
    session_before,
    session_user,
)
from ._response_entry import (
    SESSION_ENVIRON,
    SESSION_VARY,
    Page,
    PageDecoder,
    encode_index,
    encode_page,
    none_match,
    sendable,
    variant_key,
    vary_digest,
    vary_names,
)
from .flight import release
from .http import one_cache_control_line, one_line
from .keys import KeyLayout
from .keyspace import OwnSpace, own_local
from .redis_tier import UNAVAILABLE
from .sentinels import MISS

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask
    from flask.typing import ResponseReturnValue
    from werkzeug.wrappers import Response

    from .cache import Cache
    from .flask_ext import AppState, TieredCache

F = TypeVar("F", bound=Callable[..., Any])

HIT_L1: Final = "HIT-L1"
HIT_L2: Final = "HIT-L2"
MISSED: Final = "MISS"
STALE: Final = "STALE"
BYPASS: Final = "BYPASS"

REFRESH_LOCK_SECONDS: Final = 30.0
"""How long a stale page's refresh lock lasts if its holder dies without releasing it."""
FAST_INDEX_MAX: Final = 10_000
PENDING: Final = "tiered_cache.route"
"""In a request's WSGI environ: the miss this request will store (a :class:`Pending`)."""
IN_VIEW: Final = "tiered_cache.in_view"
"""In a request's WSGI environ while a cached view runs: a cached view that it calls
runs uncached (the outer view's response is the request's page, and its one miss)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RouteOptions:
    """The options of one ``@tc.cached`` view."""

    timeout: float | None
    key_prefix: str | None
    query_string: bool
    vary: tuple[str, ...]
    namespace: str | None
    unless: Callable[[], bool] | None
    per_user: bool
    public: bool
    status_codes: tuple[int, ...]
    etag: bool
    stale_ttl: float

    @property
    def fast(self) -> bool:
        """Whether the WSGI fast path may serve this route's pages."""
        return self.public and not self.per_user and self.unless is None


@dataclasses.dataclass(slots=True)
class Lookup:
    """What a lookup found: a page servable to this request, or where one would go."""

    page: Page | None
    source: str
    index: tuple[str, ...] | None
    """The ``Vary`` names the route key's index held, if it held one."""
    entry_key: str
    """The key the page lives (or will live) under."""


@dataclasses.dataclass(slots=True)
class Pending:
    """A miss whose final response may be stored when the request finishes."""

    routes: Routes
    options: RouteOptions
    keyspace: OwnSpace
    key: str
    index: tuple[str, ...] | None
    lock: tuple[str, bytes] | None
    session_before: str | None = None
    """The session's digest before the view ran, when hooks had already changed it."""
    session_read: bool = False
    session: str | None = None
    """The digest of the session the view read; None when it changed it (unstorable)."""


@dataclasses.dataclass(slots=True)
class FastTarget:
    """Where the fast path finds the page of one request location."""

    key: str
    local: Callable[[str], Hashable | None] | None
    """The route's namespace's trusted L1 key of ``key``; None: :func:`own_local` of
    ``key`` (the default namespace, which has no version)."""
    etag: bool
    where: Hashable = None
    """The L1 key of ``key`` when ``local`` is None (made once, not on every hit)."""


class Routes:
    """The route cache of one app (``app.extensions["tiered_cache"].extras["routes"]``).

    Misses are stored from Flask's ``request_finished`` signal, whose receiver is
    connected only while a miss is in flight (hits, nearly every request of a hot page,
    then pay nothing for it). Connecting and disconnecting happen under a lock with the
    count of misses in flight, and a miss is counted as soon as its view has returned,
    before Flask finishes the request, so every miss's signal finds the receiver connected.

    :param cache: the app's cache.
    :param app: the app (the signal's sender).
    """

    def __init__(self, cache: Cache, app: Flask) -> None:
        self.cache = cache
        self._pages = OwnSpace(cache)
        # The decoded pages may hold half of L1's budget again (see PageDecoder).
        self.pages = PageDecoder(max_bytes=cache.config.l1_max_bytes // 2)
        self.fast: dict[Location, FastTarget] = {}
        """A request's :data:`Location` -> where a public route keeps its page."""
        self._app = app
        self._misses = 0
        self._misses_lock = threading.Lock()
        self.fast_on = True
        """False when middleware sits between the fast path and Flask (see wsgi.init_app):
        then no page is offered to the fast path."""
        renew_after_fork(self, Routes.after_fork)

    def after_fork(self) -> None:
        """In a forked child: no miss of the parent's is in flight here, and the lock
        may have been held by a parent's thread at the fork."""
        self._misses_lock = threading.Lock()
        if self._misses:
            self._misses = 0
            request_finished.disconnect(_finished, self._app)

    # -- keys and lookups --------------------------------------------------------------

    def where(self, options: RouteOptions, environ: Mapping[str, Any]) -> tuple[OwnSpace, str]:
        """Where this request's pages live, and its route key."""
        key = route_key(environ, key_prefix=options.key_prefix, query_string=options.query_string)
        if options.per_user:
            key += "\x00u=" + session_user()
        return self._keyspace(options), key

    def _keyspace(self, options: RouteOptions) -> OwnSpace:
        """Where a route's pages live: its namespace (at its current version), in the
        slot of the library's own entries, which no user key reaches."""
        if options.namespace is None:
            return self._pages
        return OwnSpace(self.cache.namespace(options.namespace))

    def lookup(
        self, keyspace: OwnSpace, key: str, environ: MutableMapping[str, Any], stale_ttl: float
    ) -> Lookup:
        """Find the page of route key ``key`` for this request (L1, then Redis)."""
        value, source = self._read(keyspace, key, stale_ttl)
        found = self.pages.get(value)
        index = None
        entry_key = key
        if type(found) is tuple:
            index = found
            digest_session_for(index, environ)
            entry_key = variant_key(key, index, environ)
            value, page_source = self._read(keyspace, entry_key, stale_ttl)
            found = self.pages.get(value)
            # A stale index still names the right headers: only the page's age matters.
            if page_source in (MISSED, STALE):
                source = page_source
            elif not (page_source == HIT_L1 and source == HIT_L1):
                source = HIT_L2
        if isinstance(found, Page):
            digest_session_for(found.vary, environ)
            if found.matches(environ):
                return Lookup(found, source, index, entry_key)
        return Lookup(None, MISSED, index, entry_key)

    def _read(self, keyspace: OwnSpace, key: str, stale_ttl: float) -> tuple[Any, str]:
        """The value under ``key`` and where it came from (MISS and ``MISS`` if none).

        Counted nowhere: a page behind a ``Vary`` index takes two reads, and a request is
        counted once, by what it was answered with (:meth:`dispatch`).
        """
        local = keyspace._local(key)
        value = self.cache._l1_look(local)
        if value is not MISS:
            return value, HIT_L1
        return _read_l2(self.cache, local, keyspace._global(key, local), stale_ttl)

    def fast_finder(self) -> Callable[[FastTarget, Mapping[str, Any]], Page | None]:
        """The fast path's lookup: the public page L1 holds for a request, or None.

        Bound to this process's L1: build it again after a fork. It never waits on
        Redis: namespace versions are the ones this process knows, and a version it
        cannot vouch for sends the request on to Flask, which asks Redis.
        """
        cache = self.cache
        read, known, decode = cache._l1_look, self.pages.known, self.pages.get

        def find(target: FastTarget, environ: Mapping[str, Any]) -> Page | None:
            local = target.local
            where = target.where if local is None else local(target.key)
            text = None if where is None else read(where)
            found = known(text) if type(text) is str else None
            if found is None:  # not decoded yet, or not a page
                found = decode(text)
            if type(found) is tuple:
                key = variant_key(target.key, found, environ)
                where = own_local(key) if local is None else local(key)
                found = None if where is None else decode(read(where))
            if type(found) is Page and found.fast and (not found.vary or found.matches(environ)):
                cache.route_l1_hits += 1  # once a request, whatever it read
                return found
            return None

        return find

    def remember_fast(self, options: RouteOptions, environ: Mapping[str, Any], key: str) -> None:
        """Let the fast path find this request's page (public routes only)."""
        if not (options.fast and self.fast_on) or "HTTP_HOST" not in environ:
            return
        location = request_location(environ)
        if location in self.fast:
            return
        if options.namespace is None:
            target = FastTarget(key, None, options.etag, own_local(key))
        else:
            target = FastTarget(key, self._keyspace(options)._local_if_trusted, options.etag)
        self.fast[location] = target
        if len(self.fast) > FAST_INDEX_MAX:
            # The oldest location goes; another thread may be trimming too.
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del self.fast[next(iter(self.fast))]

    # -- a request to a cached view ---------------------------------------------------

    def dispatch(self, options: RouteOptions, view: Callable[[], Any]) -> ResponseReturnValue:
        """Answer a request to a cached view: from the cache, or by running ``view``."""
        environ = request.environ
        method = environ["REQUEST_METHOD"]
        if method not in {"GET", "HEAD"} or IN_VIEW in environ:
            return view()  # type: ignore[no-any-return]
        authorized = "HTTP_AUTHORIZATION" in environ
        if (authorized and not options.public) or (options.unless is not None and options.unless()):
            return _marked(_outermost(view, environ), BYPASS)
        live, key = self.where(options, environ)
        # One namespace version from lookup to store: a page a view made before an
        # invalidation is stored under the version it invalidated, where nobody reads.
        keyspace = live._pinned()
        found = self.lookup(keyspace, key, environ, options.stale_ttl)
        page, lock = found.page, None
        if page is not None and authorized and not page.public:
            page = None  # another, non-public route stored it under the same key
        if page is not None:
            if found.source != STALE:
                if found.source == HIT_L1:
                    self.cache.route_l1_hits += 1
                else:
                    self.cache.l2_hits += 1
                self.remember_fast(options, environ, key)
                return self.respond(page, found.source, environ, etag=options.etag)
            # Only a GET refreshes: a HEAD's response is not stored, nor one to no-store.
            refresh = method == "GET" and not _no_store_asked(environ)
            lock = self._lock(keyspace, found.entry_key) if refresh else None
            if lock is None:  # another request is refreshing it, or this one may not
                self.cache.stale_served += 1
                return self.respond(page, STALE, environ, etag=options.etag)
        self.cache.misses += 1  # the view runs (a stale page's refresh too)
        pending = Pending(self, options, keyspace, key, found.index, lock, session_before())
        return self._run(view, pending)

    def _run(self, view: Callable[[], Any], pending: Pending) -> Response:
        """Run the view on a miss; its final response is judged in :func:`_finished`."""
        try:
            rv = _outermost(view, request.environ)
            # Now, before the session interface reads the session to save it.
            pending.session_read = pending.options.per_user or _session_read()
            if pending.session_read:
                pending.session = session_after(pending.session_before)
            response = current_app.make_response(rv)
        except BaseException:
            self.unlock(pending)
            raise
        response.headers["X-Cache"] = MISSED
        if type(response.headers) is Headers:
            response.headers.__class__ = _AllLines
        self._count_miss(+1)
        request.environ[PENDING] = pending
        return response

    def respond(
        self, page: Page, source: str, environ: Mapping[str, Any], *, etag: bool
    ) -> Response:
        """The response of a hit: the page, or a 304 when ``If-None-Match`` matches it."""
        make = _hit_class(current_app.response_class)
        delivery = (("X-Cache", source), page.age(self.cache._clock()))
        if etag and page.not_modified_for(environ):
            lines = [*page.not_modified, *delivery]
            response = make(status=304, headers=_headers(lines.copy()))
        else:
            lines = [*page.headers, *delivery]
            # A list body: no Content-Length recomputed (the page has it), nothing re-encoded.
            response = make([page.body], status=page.status, headers=_headers(lines.copy()))
        response.hit_lines = lines  # type: ignore[attr-defined]
        return response

    # -- storing the final response ----------------------------------------------------

    def store(self, pending: Pending, response: Response) -> None:
        """Store the final response of a miss when the rules allow it.

        A HEAD miss gets the headers a GET's page would carry (its ETag, its ``Vary``)
        and the same 304, but is never stored: its page would have no body. Nor is the
        response to a request that says ``Cache-Control: no-store`` (RFC 9111 5.2.1.5:
        no cache stores any of it; served from the cache it may be).
        """
        options = pending.options
        _one_line_each(response.headers)
        if not _storable(options, response):
            return
        if pending.session_read and pending.session is None:
            return  # the view changed the session, or its contents have no stable digest
        body = response.get_data()
        # Validators only for 2xx pages: RFC 9110 13.2.1 ignores preconditions otherwise.
        validated = 200 <= response.status_code < 300
        if validated and options.etag and "ETag" not in response.headers:
            response.set_etag(generate_etag(body))
        if pending.session_read:
            response.vary.add("Cookie")
        for name in options.vary:
            response.vary.add(name)
        etag = unquote_etag(response.headers.get("ETag"))[0] if validated else None
        # A guessed namespace version keys what no invalidation reaches: not stored.
        keep = request.method == "GET" and not _no_store_asked(request.environ)
        if keep and not pending.keyspace.guessed:
            self._keep(pending, response, body, etag)
        if options.etag and none_match(request.environ, etag):
            # As a hit answers: If-None-Match alone. If-Match, If-Modified-Since and
            # Range are the view's to answer (werkzeug's make_conditional would answer
            # them too, with a 412 that no hit gives).
            response.status_code = 304

    def _keep(self, pending: Pending, response: Response, body: bytes, etag: str | None) -> None:
        """Store the page of a GET (``etag`` unquoted, None for no validator)."""
        options, environ = pending.options, request.environ
        # The headers as werkzeug sends them (a Location made a URI...): hits, on the
        # fast path too, send the stored ones as they are.
        headers = response.get_wsgi_headers(environ).to_wsgi_list()
        if not sendable(response.status, headers):
            self.cache.redis.log.warning(  # noqa: PLE1205 - its first argument is a kind
                "unsendable-page",
                "not caching %s: a header name that is no token, or a control character "
                "in a header or the status line, which a hit would send as it is",
                request.path,
            )
            return
        names = vary_names(response.vary)
        if pending.session_read:
            names = vary_names((*names, SESSION_VARY))
            environ[SESSION_ENVIRON] = pending.session
        text = encode_page(
            status=response.status,
            headers=headers,
            body=body,
            etag=etag,
            stored=self.cache._clock(),
            vary=names,
            digest=vary_digest(names, environ),
            public=options.public,
        )
        entry_key = pending.key
        if names or pending.index:
            index = vary_names((*names, *(pending.index or ())))
            # Written again with every page, so that it never expires before one of the
            # pages it leads to: past its time it would be read from Redis on every
            # request (never held in L1, never found by the fast path) while they last.
            self._put(pending, pending.key, encode_index(index))
            entry_key = variant_key(pending.key, index, environ)
        self._put(pending, entry_key, text)
        self.pages.get(text)  # the string L1 now holds: hits find it decoded, by identity
        self.remember_fast(options, environ, pending.key)

    def _put(self, pending: Pending, key: str, text: str) -> None:
        local, gkey = pending.keyspace._where(key)
        options = pending.options
        self.cache._store(
            local, gkey, text, options.timeout, stale_ttl=options.stale_ttl, overtaking=False
        )

    # -- the refresh lock of a stale page ----------------------------------------------

    def _lock(self, keyspace: OwnSpace, key: str) -> tuple[str, bytes] | None:
        """Take the page's flight lock (cluster-wide); None when someone else holds it."""
        lock_key = KeyLayout.flight_lock(keyspace._where(key)[1])
        token = uuid.uuid4().hex.encode()
        px = math.ceil(REFRESH_LOCK_SECONDS * 1000)
        taken = self.cache.redis.run("lock", lambda c: c.set(lock_key, token, nx=True, px=px))
        return (lock_key, token) if taken is not UNAVAILABLE and taken else None

    def settle(self, pending: Pending) -> None:
        """The end of a miss, stored or not: release its lock, stop counting it."""
        try:
            self.unlock(pending)
        finally:
            self._count_miss(-1)

    def _count_miss(self, delta: int) -> None:
        """Count misses in flight; ``request_finished`` is connected while there are any."""
        with self._misses_lock:
            # Never below 0: a child forked during a miss may still settle it.
            self._misses = max(0, self._misses + delta)
            if delta > 0 and self._misses == 1:
                request_finished.connect(_finished, self._app, weak=False)
            elif delta < 0 and self._misses == 0:
                request_finished.disconnect(_finished, self._app)

    def unlock(self, pending: Pending) -> None:
        """Release the refresh lock a miss holds, if any (once)."""
        lock, pending.lock = pending.lock, None
        if lock is not None:
            self.cache.redis.run("unlock", lambda c: release(c, *lock))


def _read_l2(cache: Cache, local: Any, gkey: str, stale_ttl: float) -> tuple[Any, str]:
    """Read a key from Redis; a fresh value fills L1, a stale one is returned as ``STALE``."""
    with cache._reading() as since:
        decoded = cache._values.decode(gkey, cache._get(gkey))
        if decoded is MISS:
            return MISS, MISSED
        frame, value = decoded
        now = cache._clock()
        if not frame.fresh_until or now < frame.fresh_until:
            return cache._fill(local, gkey, frame, value, since), HIT_L2
        if stale_ttl and now < frame.fresh_until + stale_ttl:
            return value, STALE
        return MISS, MISSED


def _headers(pairs: list[tuple[str, str]]) -> Headers:
    """A werkzeug ``Headers`` holding ``pairs`` as they are.

    The pairs are a stored page's, checked by werkzeug when the page was first made, and
    ``Headers(pairs)`` would check every name and value again on every hit (the largest
    cost of a hit's response). ``Headers`` keeps its pairs in ``_list``; should a future
    werkzeug stop doing so, the public constructor is used instead.
    """
    headers = Headers()
    if type(getattr(headers, "_list", None)) is list:
        headers._list = pairs
        return headers
    return Headers(pairs)  # pragma: no cover - a werkzeug without Headers._list


def _hit_class(base: type[Response]) -> type[Response]:
    """``base`` (the app's response class) for hits, whose headers are not checked twice.

    werkzeug's ``get_wsgi_headers`` copies the headers through ``Headers(headers)``,
    which checks every name and value again, then fixes what needs fixing: a
    ``Location`` or ``Content-Location`` made a URI, ``Content-Length`` dropped or
    computed. A hit's headers were checked when its page was first made (and by
    ``Headers`` itself, for any an ``after_request`` hook added), so when none of those
    fixes applies they are handed out as they are; otherwise werkzeug's method runs.
    Likewise the body: werkzeug wraps it in a generator that encodes each item and an
    iterator that closes the response, which a list of one ``bytes`` with nothing to
    call on close needs neither.
    """
    found = _HIT_CLASSES.get(base)
    if found is not None:
        return found

    class HitResponse(base):  # type: ignore[valid-type,misc]
        hit_lines: Sequence[tuple[str, str]] = ()  # each hit sets its own list
        """The header lines the hit was made with, before any ``after_request`` hook."""

        def get_wsgi_headers(self, environ: WSGIEnvironment) -> Headers:
            headers: Headers = self.headers
            if headers._list != self.hit_lines:  # one C comparison: the same tuples
                _drop_hooks_repeats(headers, self.hit_lines)
            if _as_they_are(headers, self.status_code):
                return headers
            fixed: Headers = super().get_wsgi_headers(environ)
            return fixed

        def get_app_iter(self, environ: WSGIEnvironment) -> Iterable[bytes]:
            body: Iterable[bytes] = self.response
            if _sent_as_it_is(body, self.status_code, environ) and not self._on_close:
                return body  # a list of bytes: nothing to encode, nothing to close
            wrapped: Iterable[bytes] = super().get_app_iter(environ)
            return wrapped

    HitResponse.__name__ = HitResponse.__qualname__ = f"Hit{base.__name__}"
    return _HIT_CLASSES.setdefault(base, HitResponse)


def _drop_hooks_repeats(headers: Headers, made: Sequence[tuple[str, str]]) -> None:
    """Drop the lines of ``headers`` that repeat what the hit's own lines say: an
    ``after_request`` hook that adds a line (``headers.add``) added it on the miss too,
    and the page kept it, so on a hit through Flask it would go out twice (the fast path,
    which runs no hooks, sends it once).

    A line repeats one of the hit's lines when it is the same line beyond its count
    there; a ``Cache-Control`` or ``Vary`` line also when each of its items is in that
    header's line the hit still sends (the page was stored with such lines joined into
    one: a hook's ``Vary: Origin`` is already in ``Vary: Accept-Encoding, Origin``).
    """
    left: dict[tuple[str, str], int] = {}
    for name, value in made:
        line = (name.lower(), value)
        left[line] = left.get(line, 0) + 1
    kept, own, added_lists = [], [], False
    for name, value in headers:
        line = (name.lower(), value)
        count = left.get(line)
        if count is None:  # the hook's
            kept.append((name, value))
            added_lists = added_lists or line[0] in _LISTS_LOWER
        elif count > 0:  # one of the hit's own lines, still sent
            kept.append((name, value))
            own.append(line)
            left[line] = count - 1
    if added_lists:
        listed: dict[str, set[str]] = {}
        for lower, value in own:
            if lower in _LISTS_LOWER:
                listed.setdefault(lower, set()).update(_list_items(value))
        kept = [
            (name, value)
            for name, value in kept
            if (name.lower(), value) in left  # the hit's own
            or name.lower() not in listed
            or not _list_items(value) <= listed[name.lower()]
        ]
    if len(kept) < len(headers):
        headers.clear()
        headers.extend(kept)


def _list_items(value: str) -> set[str]:
    """The items of a ``Cache-Control`` or ``Vary`` line (werkzeug's list parser, which
    knows quoted strings), compared case-insensitively."""
    return {item.strip().lower() for item in parse_list_header(value) if item.strip()}


def _as_they_are(headers: Headers, status: int) -> bool:
    """Whether werkzeug's ``get_wsgi_headers`` would change nothing but the copy."""
    if type(headers) is not Headers or not 200 <= status < 300 or status == 204:
        return False
    names = {name.lower() for name, _ in headers._list}
    return "content-length" in names and names.isdisjoint(_FIXED_BY_WERKZEUG)


def _sent_as_it_is(body: Any, status: int, environ: WSGIEnvironment) -> bool:
    """Whether werkzeug's ``get_app_iter`` would only wrap ``body`` (a list of one bytes,
    as :meth:`Routes.respond` made it) to encode and close it, which it needs neither."""
    return (
        type(body) is list
        and len(body) == 1
        and type(body[0]) is bytes
        and 200 <= status < 300
        and status != 204
        and environ["REQUEST_METHOD"] != "HEAD"
    )


_HIT_CLASSES: dict[type[Response], type[Response]] = {}
_FIXED_BY_WERKZEUG: Final = frozenset({"location", "content-location"})


def _storable(options: RouteOptions, response: Response) -> bool:
    """The rules that keep a response out of the shared cache (SPEC section 3)."""
    if response.status_code not in options.status_codes:
        return False
    if response.is_streamed or response.direct_passthrough or "Set-Cookie" in response.headers:
        return False
    # private, no-store or no-cache, in any case (RFC 9111 5.2), on any line, and also
    # in a malformed header ("max-age=60;private") that werkzeug's parser reads without
    # them: what it says is still not to share it.
    if _REFUSING.search(one_cache_control_line(response.headers)):
        return False
    return "*" not in response.vary


_REFUSING: Final = re.compile(r"private|no-store|no-cache", re.IGNORECASE)


class _AllLines(Headers):
    """A miss's headers, whose ``Vary`` and ``Cache-Control`` read as all their lines.

    werkzeug's ``response.vary`` and ``response.cache_control`` read ``headers.get``
    (the first line) and write one line in place of them all: the session layer's
    ``vary.add("Cookie")``, after a hook added ``Vary: Origin`` as a second line (as
    flask-cors does), would drop ``Origin``, and the page would be keyed without it.
    """

    def get(self, key: Any, default: Any = None, type: Any = None) -> Any:  # type: ignore[override]
        if type is None and isinstance(key, str) and key.lower() in _LISTS_LOWER:
            lines = self.getlist(key)
            if len(lines) > 1:
                return ", ".join(lines)
        return super().get(key, default, type)


_LISTS: Final = ("Cache-Control", "Vary")
"""The headers whose lines a page is judged and stored by as one list."""
_LISTS_LOWER: Final = frozenset(name.lower() for name in _LISTS)


def _one_line_each(headers: Headers) -> None:
    """Join several ``Cache-Control`` or ``Vary`` lines into one (see :func:`one_line`)."""
    for name in _LISTS:
        one_line(headers, name)


def _outermost(view: Callable[[], Any], environ: MutableMapping[str, Any]) -> Any:
    """Run a cached view with :data:`IN_VIEW` set: a cached view it calls runs as it is
    (its miss would replace this one's, never to be settled, or store its own response
    under this URL)."""
    environ[IN_VIEW] = True
    try:
        return view()
    finally:
        del environ[IN_VIEW]


def _marked(rv: Any, source: str) -> Response:
    response = current_app.make_response(rv)
    response.headers["X-Cache"] = source
    return response


def _no_store_asked(environ: Mapping[str, Any]) -> bool:
    """Whether the request says ``Cache-Control: no-store`` (in any case, any line)."""
    directives = parse_list_header(environ.get("HTTP_CACHE_CONTROL") or "")
    return any(item.partition("=")[0].strip().lower() == "no-store" for item in directives)


def _session_read() -> bool:
    """Whether the session was used so far in this request (unknown kinds count as used)."""
    session = current_session()
    return session is not None and bool(getattr(session, "accessed", True))


def _finished(sender: Flask, response: Response, **extra: Any) -> None:
    """``request_finished``: store the final response of a miss, release its lock."""
    pending: Pending | None = request.environ.pop(PENDING, None)
    if pending is None:
        return
    routes = pending.routes
    try:
        routes.store(pending, response)
    except Exception as exc:  # the response is made; a page we cannot store is a miss
        routes.cache._log.warning("routes", "could not cache %s: %r", request.path, exc)
    finally:
        routes.settle(pending)


def release_leftover(environ: MutableMapping[str, Any]) -> None:
    """Release the refresh lock of a miss that never reached ``request_finished``.

    Run by the extension's WSGI wrapper after every request (an error while finishing
    the response skips the signal) and by :mod:`tiered_cache.http` after the GET it runs
    in a request context of its own. Cheaper than a ``teardown_request`` hook, which
    every request would pay for.
    """
    pending = environ.pop(PENDING, None)
    if isinstance(pending, Pending):
        pending.routes.settle(pending)


def cached_view(extension: TieredCache, options: RouteOptions) -> Callable[[F], F]:
    """Return the decorator of one cached view (usable before ``init_app``)."""

    def decorate(fn: F) -> F:
        is_async = inspect.iscoroutinefunction(fn)

        @functools.wraps(fn)
        def view(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            call = current_app.ensure_sync(fn) if is_async else fn
            routes: Routes = extension.state().extras["routes"]
            return routes.dispatch(options, lambda: call(*args, **kwargs))

        view.__tiered_cache_route__ = options  # type: ignore[attr-defined]
        return view  # type: ignore[return-value]

    return decorate


def init_app(app: Flask, state: AppState) -> None:
    """Give ``app`` its route cache (it connects ``request_finished`` while misses are
    in flight)."""
    state.extras["routes"] = Routes(state.cache, app)
