"""A small product catalogue on tiered_cache: ``make run``, then open http://127.0.0.1:8000/.

Settings come from the environment: every ``TIERED_CACHE_*`` variable (see the README's
configuration table), ``EXAMPLE_DB_PATH`` (the SQLite file; default
``instance/catalogue.sqlite3``), ``EXAMPLE_DB_DELAY_MS`` (default 20, added to every
query so the cache's effect shows) and ``SECRET_KEY``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from .db import Catalogue
from .views import bp, tc

DEFAULTS = {
    "TIERED_CACHE_ENDPOINTS": True,  # /_tiered_cache/health, /stats, /metrics
    "TIERED_CACHE_SESSIONS": True,  # server-side sessions in Redis
    "EXAMPLE_DB_DELAY_MS": 20,
}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings (defaults < environment < ``config``), database, cache, routes."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    app.config.update(
        (key, value)
        for key, value in os.environ.items()
        if key.startswith(("TIERED_CACHE_", "EXAMPLE_")) or key == "SECRET_KEY"
    )
    app.config.update(config or {})
    if not app.config["SECRET_KEY"]:  # gunicorn.conf.py exports one for all its workers
        app.config["SECRET_KEY"] = secrets.token_hex(32)
    path = app.config.get("EXAMPLE_DB_PATH") or os.path.join(app.instance_path, "catalogue.sqlite3")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    delay = app.config["EXAMPLE_DB_DELAY_MS"]
    try:
        delay_ms = float(delay)
    except (TypeError, ValueError):
        raise ValueError(f"EXAMPLE_DB_DELAY_MS={delay!r}: expected milliseconds >= 0") from None
    db = Catalogue(path, delay_ms=delay_ms)
    db.create()
    app.extensions["example_catalogue"] = db

    tc.init_app(app)  # reads the TIERED_CACHE_* settings from app.config
    app.register_blueprint(bp)
    for code in (400, 404, 405, 415):
        app.register_error_handler(code, json_error)
    # Added after init_app, so it also wraps the answers of the cache's WSGI fast path.
    app.wsgi_app = with_worker_pid(app.wsgi_app)  # type: ignore[method-assign]
    return app


def json_error(error: HTTPException) -> tuple[dict[str, Any], int]:
    """Client errors as JSON, like the rest of the API."""
    return {"error": error.description}, error.code or 500


def with_worker_pid(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Add ``X-Worker-Pid`` to every response: which gunicorn worker answered."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        return wsgi_app(environ, start)

    return app


def __getattr__(name: str) -> Any:
    # `example_app:app` for gunicorn or flask, made on first use: importing the package
    # (as its tests do) does not create a database as a side effect.
    if name == "app":
        globals()["app"] = made = create_app()
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
