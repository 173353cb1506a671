"""A Flask app with tiered_cache sessions and the routes the session tests drive."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, session
from flask.testing import FlaskClient

from tests.flask_apps import close_app
from tests.redis_harness import RedisServer
from tiered_cache import TieredCache
from tiered_cache._session_interface import TieredSessionInterface
from tiered_cache._session_store import MOVED
from tiered_cache.endpoints import publisher_of

Hook = Callable[[], None]
AppFactory = Callable[..., tuple[Flask, TieredCache]]
HANDSHAKE_AND_ADMIN = ("hello", "client", "config", "info")


def session_app(redis_url: str, **config: Any) -> tuple[Flask, TieredCache]:
    """An app with sessions on ``redis_url`` and the routes below."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="not-so-secret",
        TIERED_CACHE_REDIS_URL=redis_url,
        TIERED_CACHE_SESSIONS=True,
        TIERED_CACHE_INVALIDATION=False,  # no bus traffic in the command counts
    )
    app.config.update(config)
    tc = TieredCache(app)
    add_routes(app, tc)
    return app, tc


@contextlib.contextmanager
def made_apps(default_url: str | None = None, **defaults: Any) -> Iterator[AppFactory]:
    """A factory of session apps, ``make(url=default_url, **config)``, each closed on exit.

    :param defaults: app configuration every app starts from (``config`` overrides it).
    """
    made: list[Flask] = []

    def make(url: str | None = None, **config: Any) -> tuple[Flask, TieredCache]:
        target = url or default_url
        assert target is not None, "no Redis URL for this session app"
        app, tc = session_app(target, **{**defaults, **config})
        made.append(app)
        return app, tc

    try:
        yield make
    finally:
        for app in made:
            close_app(app)


def add_routes(app: Flask, tc: TieredCache) -> None:
    """Log in/out, rotate, read and write keys, and a route that ignores the session."""
    hooks: dict[str, Hook] = {}
    app.extensions["session_test_hooks"] = hooks

    @app.post("/login/<user>")
    def login(user: str) -> str:
        tc.sessions.login(user)
        return "in"

    @app.post("/logout")
    def logout() -> str:
        tc.sessions.logout()
        return "out"

    @app.post("/clear")
    def clear() -> str:
        session.clear()
        return "cleared"

    @app.post("/rotate")
    def rotate() -> str:
        tc.sessions.rotate()
        return "rotated"

    @app.get("/me")
    def me() -> str:
        return str(session.get("user_id"))

    @app.post("/set/<key>/<value>")
    def set_value(key: str, value: str) -> str:
        session[key] = value
        return "set"

    @app.get("/get/<key>")
    def get_value(key: str) -> str:
        return str(session.get(key))

    @app.get("/has/<key>")
    def has(key: str) -> str:
        return "yes" if key in session else "no"

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    @app.route("/hook", methods=["GET", "POST"])
    def hook() -> str:
        # A test-provided body: blocks, changes the session, revokes... as it needs.
        hooks["hook"]()
        return "hooked"


def set_hook(app: Flask, hook: Hook) -> None:
    """What ``/hook`` runs."""
    app.extensions["session_test_hooks"]["hook"] = hook


def interface(app: Flask) -> TieredSessionInterface:
    """The app's session interface."""
    found = app.session_interface
    assert isinstance(found, TieredSessionInterface)
    return found


def sid(client: FlaskClient, name: str = "session") -> str | None:
    """The session id the client holds (its cookie's value)."""
    cookie = client.get_cookie(name)
    return None if cookie is None else cookie.value


class Clock:
    """An epoch clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        with self._lock:
            self.now += seconds


def logged_in(app: Flask, user: str) -> FlaskClient:
    """A client of ``app`` logged in as ``user``."""
    client = app.test_client()
    assert client.post(f"/login/{user}").status_code == 200
    return client


def set_cookies(response: Any) -> list[str]:
    """The response's ``Set-Cookie`` headers."""
    return list(response.headers.getlist("Set-Cookie"))


def cookie_deleted(response: Any) -> bool:
    """Whether the response deletes a cookie."""
    return any("Max-Age=0" in value for value in set_cookies(response))


def command_calls(server: RedisServer) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, without handshakes and admin."""
    with server.client() as admin:
        stats = admin.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
    return {k: v for k, v in calls.items() if not k.startswith(HANDSHAKE_AND_ADMIN)}


def quiet_app(make_app: AppFactory, server: RedisServer, **config: Any) -> Flask:
    """An app whose only Redis traffic is the sessions' (its stats publisher stopped)."""
    app, _ = make_app(server.url, **config)
    publisher = publisher_of(TieredCache.state(app))
    if publisher is not None:
        publisher.stop(unpublish=False)
    return app


def moved(r: Any, session_id: str | None) -> bool:
    """Whether ``session_id``'s key holds the marker a login or rotation leaves."""
    value = r.get(f"session:{session_id}")
    return isinstance(value, bytes) and value.startswith(MOVED)
