"""The WSGI fast path: public cached pages served before Flask builds a request context.

``init_app`` wraps ``app.wsgi_app``. For a GET or HEAD to a URL (scheme, ``Host``, path
and query string) that a ``public=True`` route (without ``per_user`` or ``unless``) has
answered in this process, the page is looked up in L1 alone (no Redis, no URL matching)
and, when L1 holds a public page whose ``Vary`` values match the request and that does
not vary on the session (which only Flask can open), served from a prebuilt header
list: ``X-Cache: HIT-L1``, ``Age``, and a 304 when ``If-None-Match`` matches the page's
ETag. Anything else (a miss, a non-public page, another method) falls through to Flask
unchanged. The wrapper also runs the extension's per-process start
hooks (the stats publisher) before the first request each process serves; one that
fails is logged and not tried again in that process.

A fast-path hit skips everything Flask would do for the request: URL matching,
``url_value_preprocessor`` and ``before_request`` hooks, the view, ``after_request`` and
``teardown_request`` hooks, opening and saving the session (so no sliding session
refresh and no ``Set-Cookie``), rate limits (``tc.limit`` and the default limits), error
handlers and the ``request_started``/``request_finished`` signals. Middleware wrapped
around ``app.wsgi_app`` *after* ``init_app`` (``ProxyFix``, say) runs before the fast
path, as it should. Middleware wrapped *before* ``init_app`` would sit between the fast
path and Flask, where a hit would skip it, and where it may rewrite the URL that pages
are keyed by (ProxyFix keys a page by the forwarded host and scheme, which the fast
path never sees): then the fast path serves nothing for that app, and ``init_app``
says so in a warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

from ._log import logger
from .routes import PENDING, release_leftover

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from .flask_ext import AppState
    from .routes import Routes

_X_CACHE: Final = ("X-Cache", "HIT-L1")
_NOT_MODIFIED: Final = "304 Not Modified"

_forks = 0
"""How many forks made this process: the fast path starts again in a forked child."""


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


def fast_path(
    inner: WSGIApplication,
    routes: Routes,
    on_process_start: Sequence[Callable[[], None]] = (),
) -> WSGIApplication:
    """Wrap ``inner`` (the app's WSGI callable) with the fast path of ``routes``.

    :param on_process_start: idempotent callables run before the first request each
        process serves (a check per request: cheaper than a ``before_request`` hook, and
        run for fast-path hits too).
    """
    locations = routes.fast
    clock: Callable[[], float] = routes.cache._clock
    find = routes.fast_finder()
    started = -1  # the _forks of the process that ran on_process_start

    # A hit is everything this process does for the request, so it is kept short: under
    # gunicorn each call and attribute read here costs several times what it costs in a
    # loop, and the fast path is compared with a bare WSGI callable.
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal started, find
        if started != _forks:
            # Concurrent first requests may both get here: all of it is idempotent. The
            # finder first: a request that sees `started` must find this process's L1.
            find = routes.fast_finder()
            started = _forks
            for start in on_process_start:
                try:
                    start()
                except Exception:  # once, logged: not a 500 on every request after it
                    logger.exception("tiered_cache: a per-process start hook failed")
        if locations:
            get = environ.get  # the Location of _page_keys.request_location, inlined
            location = (
                get("wsgi.url_scheme", "http"),
                get("HTTP_HOST"),
                get("SCRIPT_NAME", ""),
                get("PATH_INFO", ""),
                get("QUERY_STRING", ""),
            )
            target = locations.get(location)
            method = environ.get("REQUEST_METHOD")
            if target is not None and method in {"GET", "HEAD"}:
                page = find(target, environ)
                if page is not None:
                    age = page.age(clock())
                    # "in environ" first: most hits send no If-None-Match, and the test
                    # costs less than the call that would find that out.
                    if (
                        target.etag
                        and "HTTP_IF_NONE_MATCH" in environ
                        and page.not_modified_for(environ)
                    ):
                        start_response(_NOT_MODIFIED, [*page.not_modified, _X_CACHE, age])
                        return []
                    start_response(page.status, [*page.headers, _X_CACHE, age])
                    return [] if method == "HEAD" else [page.body]
        try:
            return inner(environ, start_response)
        finally:
            if PENDING in environ:
                release_leftover(environ)

    return app


def init_app(app: Flask, state: AppState) -> None:
    """Put the fast path in front of ``app`` (after :func:`tiered_cache.routes.init_app`);
    turn it off when middleware already wraps ``app.wsgi_app``."""
    routes: Routes = state.extras["routes"]
    inner = app.wsgi_app
    own = type(app).wsgi_app
    if getattr(inner, "__self__", None) is not app or getattr(inner, "__func__", None) is not own:
        routes.fast_on = False
        logger.warning(
            "tiered_cache: %r wraps app.wsgi_app before init_app, so the WSGI fast path is "
            "off for this app (a hit would skip that middleware, which may rewrite the URL "
            "pages are keyed by); wrap middleware such as ProxyFix after init_app",
            inner,
        )
    wrapped = fast_path(inner, routes, state.on_process_start)
    app.wsgi_app = wrapped  # type: ignore[method-assign,assignment]


__all__ = ["fast_path", "init_app"]
