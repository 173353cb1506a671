"""Redis sessions on flask-session (SPEC section 5): ``TIERED_CACHE_SESSIONS = True``.

``init_app`` installs :class:`~tiered_cache._session_interface.TieredSessionInterface`, a
subclass of flask-session's ``RedisSessionInterface`` that uses the extension's Redis
connection (single server, Sentinel or Cluster) with its short timeout and circuit
breaker. flask-session's ``SESSION_*`` keys keep their meaning (``SESSION_KEY_PREFIX``,
``SESSION_PERMANENT``, ``SESSION_ID_LENGTH``, ``SESSION_SERIALIZATION_FORMAT``,
``SESSION_USE_SIGNER``), as do Flask's ``SESSION_COOKIE_*`` and
``PERMANENT_SESSION_LIFETIME``. ``SESSION_TYPE`` (other than ``"redis"``) and
``SESSION_REDIS`` are refused: they would name another store.

What a request can rely on:

- The session loads on first use (one ``GETEX``, which slides its TTL); a request that
  does not touch it makes no Redis call and is served while Redis is down.
- Redis down or stalled: the first use of the session raises :class:`SessionUnavailable`,
  a ``503`` with ``Retry-After``, after at most one socket timeout (at once while the
  breaker is open); never a 500, a hang, or a silently empty session. A write that fails
  when the response is saved turns that response into the same 503.
- An unmodified session is never rewritten; a changed one is written with ``SET XX`` (a
  session revoked or moved meanwhile stays dead), a new one with ``SET NX``.
- ``Set-Cookie`` only when the session is new, its id changed, it became permanent or
  stopped being so, or half of the cookie's lifetime has passed; deleted by the request
  that ended the session (logout, emptied) and when it holds a value never issued, but
  not when it names a dead session (a concurrent login may have just moved it).
- Bytes in Redis are decoded by msgspec, never by pickle; anything else is an empty
  session and a warning.
- Nothing of a session is held in L1: a revoked session is dead on its next request.

:class:`SessionManager` (``tc.sessions``) logs users in and out and revokes them; see
:mod:`tiered_cache._session_store` for the Redis layout.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any, Final

from flask.globals import request_ctx
from werkzeug.exceptions import ServiceUnavailable

from .errors import CacheUnavailable, ConfigurationError

if TYPE_CHECKING:
    from flask import Flask

    from ._session_interface import TieredSessionInterface
    from ._session_object import TieredSession
    from .flask_ext import AppState

EXTRAS_KEY: Final = "sessions"


class SessionUnavailable(ServiceUnavailable, CacheUnavailable):
    """Redis could not serve the session: ``503 Service Unavailable`` with ``Retry-After``.

    The Redis error (or :class:`~tiered_cache.CacheUnavailable` for an open breaker) is
    kept as ``__cause__``.

    :param retry_after: seconds for the ``Retry-After`` header.
    """

    description = "The session store is unavailable. Please try again in a moment."

    def __init__(self, *, retry_after: int = 1) -> None:
        super().__init__(retry_after=retry_after)


class SessionManager:
    """Log users in and out of the current request's session, and revoke users.

    Reached as ``tc.sessions``. :meth:`login`, :meth:`logout` and :meth:`rotate` act on
    the session of the request being handled; :meth:`revoke_user` needs no request.
    Each raises :class:`SessionUnavailable` (a 503) when Redis is unavailable.
    """

    def __init__(self, interface: TieredSessionInterface) -> None:
        self.interface = interface

    def login(self, user_id: str | int) -> None:
        """Log ``user_id`` in: rotate the session id (session fixation defence).

        The session keeps its data; ``session["user_id"]`` becomes ``user_id``; the old
        id is deleted in the same Redis step as the new one is written (on a Redis
        Cluster, where the two may live on different nodes, just before it); the new id
        is recorded under the user for :meth:`revoke_user`. The response sends the new
        cookie.

        :param user_id: a string or an int (``1`` and ``"1"`` name the same user).
        :raises TypeError: for another kind of user id.
        :raises SessionUnavailable: when Redis is unavailable (nothing changed).
        """
        self.interface.login(self.current(), user_id)

    def logout(self) -> None:
        """Destroy the current session; the response deletes the cookie.

        The request goes on with a new, empty session (anything put in it is stored under
        a new id).

        :raises SessionUnavailable: when Redis is unavailable.
        """
        self.interface.logout(self.current())

    def rotate(self) -> None:
        """Give the current session a new id, keeping its data and user.

        If the session was revoked while this request ran, it is not brought back: the
        request goes on with a new, empty session.

        :raises SessionUnavailable: when Redis is unavailable.
        """
        self.interface.rotate(self.current())

    def revoke_user(self, user_id: str | int) -> int:
        """Destroy every session of ``user_id`` (password change, compromise).

        One script call (on a Redis Cluster too: a user's sessions share a slot). A
        request in flight on one of them does not write it back. A session is revoked
        under the user it was logged in as by :meth:`login`.

        :returns: how many live sessions were destroyed.
        :raises TypeError: for a user id that is not a str or an int.
        :raises SessionUnavailable: when Redis is unavailable.
        """
        return self.interface.revoke_user(user_id)

    @staticmethod
    def current() -> TieredSession:
        """The session of the request being handled (not marked as used by this).

        :raises RuntimeError: outside a request, or when the app's session interface was
            replaced by another one.
        """
        from ._session_object import TieredSession

        session = getattr(request_ctx, "_session", None)
        if session is None:
            raise RuntimeError("tc.sessions.login/logout/rotate need a request context")
        if not isinstance(session, TieredSession):
            raise RuntimeError(
                f"the request's session is a {type(session).__name__}, not a tiered_cache "
                "session: was app.session_interface replaced after init_app?"
            )
        return session


def manager_of(state: AppState) -> SessionManager:
    """The app's :class:`SessionManager`.

    :raises RuntimeError: when ``TIERED_CACHE_SESSIONS`` is off for the app.
    """
    manager = state.extras.get(EXTRAS_KEY)
    if not isinstance(manager, SessionManager):
        raise RuntimeError(
            "tc.sessions needs TIERED_CACHE_SESSIONS = True in the app's configuration "
            "(or TieredCache(sessions=True))"
        )
    return manager


def init_app(app: Flask, state: AppState) -> None:
    """Install the session interface when ``TIERED_CACHE_SESSIONS`` is on.

    :raises ConfigurationError: naming a bad ``SESSION_*`` setting, or when flask-session
        is not installed.
    """
    if not state.config.sessions:
        return
    if importlib.util.find_spec("flask_session") is None:
        raise ConfigurationError(
            "TIERED_CACHE_SESSIONS",
            True,
            "needs flask-session: pip install 'tiered-cache[sessions]'",
        )
    from ._session_interface import TieredSessionInterface
    from ._session_store import SessionSettings, SessionStore

    settings = SessionSettings.from_config(app.config, has_secret=bool(app.secret_key))
    retry_after = max(1, math.ceil(state.cache_config.breaker_reset))
    store = SessionStore(state.cache.redis, settings, retry_after=retry_after)
    interface = TieredSessionInterface(app, store)
    app.session_interface = interface
    state.extras[EXTRAS_KEY] = SessionManager(interface)
    _answer_outages_outside_views(app)


def _answer_outages_outside_views(app: Flask) -> None:
    """A session first used outside the view during an outage (an ``after_request``
    hook, as Flask-Login's remember-cookie refresh on every request; an error handler's
    template) raises where Flask turns any exception into a 500: answer it as Flask
    answers it from a view, an HTTP error (the app's 503 handler, if any, else its own
    503), instead (SPEC 5: never a 500). When the app's error handler uses the session
    too (for that 503, or for the 500 of another error), the outage's own 503 answers.
    The ``after_request`` hooks then run again for that answer, as for any error page;
    the one that failed fails again, and Flask logs it.
    """
    handle = app.handle_exception

    def handle_exception(e: Exception) -> Any:
        try:
            if isinstance(e, SessionUnavailable):
                answer = app.handle_http_exception(e)
            else:
                return handle(e)
        except SessionUnavailable as unavailable:
            # The app's error handler (its 500, 503 or Exception page, showing who is
            # logged in) used the session too: the outage's own 503 then, not a 500.
            answer = unavailable
        return app.finalize_request(answer, from_error_handler=True)

    app.handle_exception = handle_exception  # type: ignore[method-assign]


def __getattr__(name: str) -> Any:
    # The classes that need flask-session, importable from here without importing it
    # for apps that do not use sessions.
    if name == "TieredSession":
        from ._session_object import TieredSession

        return TieredSession
    if name == "TieredSessionInterface":
        from ._session_interface import TieredSessionInterface

        return TieredSessionInterface
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
