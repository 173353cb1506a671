"""The apps the rate-limit benchmark serves under gunicorn: one variant per run.

``gunicorn "bench.ratelimit_app:create_app()"`` with ``BENCH_VARIANT`` set to one of
:data:`VARIANTS` and ``BENCH_REDIS_URL`` to the benchmark's own redis-server. Every
variant answers ``GET /limited`` with the same two bytes, under :data:`LIMIT` (high
enough that every request of the run is admitted).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from flask import Flask

LIMIT = "1000000/hour"
PATH = "/limited"

VARIANTS = {
    "plain": "(a) the view, no limit",
    "tc_log": "(b) @tc.limit, sliding-window-log",
    "tc_gcra": "(c) @tc.limit, gcra",
    "fl_moving": "(d) Flask-Limiter 4, moving-window",
    "fl_moving_headers": "(e) Flask-Limiter 4, moving-window, headers on",
}


def view() -> str:
    return "ok"


def create_app() -> Flask:
    """The app of ``BENCH_VARIANT``."""
    variant = os.environ["BENCH_VARIANT"]
    app = Flask(__name__)
    _BUILDERS[variant](app, os.environ["BENCH_REDIS_URL"])
    return app


def _plain(app: Flask, redis_url: str) -> None:
    app.add_url_rule(PATH, "limited", view)


def _tiered(app: Flask, redis_url: str, strategy: str) -> None:
    from tiered_cache.flask_ext import TieredCache

    tc = TieredCache(app, redis_url=redis_url, prefix=f"bench-rl-{strategy}")
    app.add_url_rule(PATH, "limited", tc.limit(LIMIT, strategy=strategy)(view))


def _flask_limiter(app: Flask, redis_url: str, headers: bool) -> None:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=redis_url,
        strategy="moving-window",
        headers_enabled=headers,
    )
    app.add_url_rule(PATH, "limited", limiter.limit(LIMIT)(view))


_BUILDERS: dict[str, Callable[[Flask, str], None]] = {
    "plain": _plain,
    "tc_log": lambda app, url: _tiered(app, url, "sliding-window-log"),
    "tc_gcra": lambda app, url: _tiered(app, url, "gcra"),
    "fl_moving": lambda app, url: _flask_limiter(app, url, headers=False),
    "fl_moving_headers": lambda app, url: _flask_limiter(app, url, headers=True),
}
