"""The apps the HTTP benchmark serves under gunicorn: one variant per run.

``gunicorn "bench.http_app:create_app()"`` with ``BENCH_VARIANT`` set to one of
:data:`VARIANTS` and ``BENCH_REDIS_URL`` to the benchmark's own redis-server. Every
variant answers ``GET /item`` with the same 2 KB JSON document, except Flask's floor: a
view returning one byte, the least any request through Flask's request cycle costs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import generate_etag, quote_etag

PAYLOAD: dict[str, Any] = {
    "id": 42,
    "name": "Ergonomic keyboard",
    "tags": [f"tag-{i}" for i in range(20)],
    "description": "x" * 1500,
    "price": 129.5,
    "stock": {"warehouse": "north", "count": 17},
}


def _as_flask_sends(document: dict[str, Any]) -> bytes:
    """The bytes a Flask view returning ``document`` sends (Flask's JSON provider)."""
    app = Flask(__name__)
    app.add_url_rule("/", "document", lambda: document)
    body: bytes = app.test_client().get("/").get_data()
    return body


BODY = _as_flask_sends(PAYLOAD)
"""What every variant but Flask's floor answers: (f) sends the very bytes (a) does."""
SLOW_SECONDS = 0.020

VARIANTS = {
    "plain": "(a) plain Flask view",
    "cached": "(b) @tc.cached, L1 hot",
    "public": "(c) @tc.cached(public=True), WSGI fast path",
    "flask_caching_redis": "(d) Flask-Caching RedisCache",
    "flask_caching_simple": "(e) Flask-Caching SimpleCache",
    "raw_wsgi": "(f) raw WSGI callable, same bytes",
    "slow_plain": "(g) 20 ms view, uncached",
    "slow_cached": "(g) 20 ms view, @tc.cached",
    "slow_public": "(g) 20 ms view, @tc.cached(public=True)",
    "flask_floor": "Flask's floor: a view returning 1 byte, no extension",
}


def create_app() -> Callable[..., Iterable[bytes]]:
    """The WSGI app of ``BENCH_VARIANT``."""
    variant = os.environ["BENCH_VARIANT"]
    if variant == "raw_wsgi":
        return _raw_wsgi
    if variant == "raw_wsgi_hit_headers":  # for bench.http_instructions only
        return _raw_wsgi_hit_headers
    app = Flask(__name__)
    build = _BUILDERS[variant]
    build(app, os.environ["BENCH_REDIS_URL"])
    return app


def _raw_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
    start_response("200 OK", headers)
    return [BODY]


HIT_HEADERS = [("ETag", quote_etag(generate_etag(BODY))), ("X-Cache", "HIT-L1"), ("Age", "0")]
"""The headers a fast-path hit sends beyond (f)'s (SPEC section 3 asks for all three)."""


def _raw_wsgi_hit_headers(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> list[bytes]:
    """(f) sending a hit's three extra headers too: what the headers alone cost."""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
    start_response("200 OK", [*headers, *HIT_HEADERS])
    return [BODY]


def _view(slow: bool = False) -> Callable[[], dict[str, Any]]:
    def item() -> dict[str, Any]:
        if slow:
            time.sleep(SLOW_SECONDS)
        return PAYLOAD

    return item


def _plain(app: Flask, redis_url: str, slow: bool = False) -> None:
    app.add_url_rule("/item", "item", _view(slow))


def _tiered(app: Flask, redis_url: str, *, public: bool = False, slow: bool = False) -> None:
    from tiered_cache.flask_ext import TieredCache

    # A prefix per variant: pages are keyed by path, and a page stored by one variant's
    # (non-public) route must not be what another variant's run serves.
    tc = TieredCache(app, redis_url=redis_url, prefix=f"bench-http-{os.environ['BENCH_VARIANT']}")
    app.add_url_rule("/item", "item", tc.cached(timeout=600, public=public)(_view(slow)))


def _flask_caching(app: Flask, redis_url: str, kind: str) -> None:
    from flask_caching import Cache as FlaskCaching

    config = {"CACHE_TYPE": kind, "CACHE_DEFAULT_TIMEOUT": 600}
    if kind == "RedisCache":
        config["CACHE_REDIS_URL"] = redis_url
    cache = FlaskCaching(app, config=config)
    app.add_url_rule("/item", "item", cache.cached(timeout=600)(_view()))


_BUILDERS: dict[str, Callable[[Flask, str], None]] = {
    "plain": _plain,
    "cached": _tiered,
    "public": lambda app, url: _tiered(app, url, public=True),
    "flask_caching_redis": lambda app, url: _flask_caching(app, url, "RedisCache"),
    "flask_caching_simple": lambda app, url: _flask_caching(app, url, "SimpleCache"),
    "slow_plain": lambda app, url: _plain(app, url, slow=True),
    "slow_cached": lambda app, url: _tiered(app, url, slow=True),
    "slow_public": lambda app, url: _tiered(app, url, public=True, slow=True),
    "flask_floor": lambda app, url: app.add_url_rule("/item", "item", lambda: b"x"),
}
