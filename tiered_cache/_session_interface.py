"""The session interface: flask-session's Redis interface on the extension's connection.

What it changes in flask-session 0.8's ``RedisSessionInterface``, and why:

- The client is the cache's (a ``Redis``, Sentinel master or ``RedisCluster``): flask-session
  refuses anything that is not a ``redis.Redis`` instance (a ``RedisCluster`` is not one)
  with a ``RuntimeWarning`` and silently connects to ``localhost:6379`` instead.
- Every call goes through the cache's breaker with its short timeout and no retries;
  an outage is a ``503`` with ``Retry-After`` (flask-session answers 500 when Redis is
  down, and waits forever when it is stalled: redis-py's default has no socket timeout).
- The session loads lazily (see :mod:`tiered_cache._session_object`), and its bytes are
  never unpickled (flask-session falls back to ``pickle.loads``).
- Saving: an unmodified session is not rewritten (its load's ``GETEX`` slid the TTL);
  an existing one is written with ``SET XX`` (in the store script, which also refuses
  an id a login or rotation moved) and a new one with ``SET NX``, so a session revoked
  or moved while a request was using it is never written back.
- The cookie is sent when the session is new, its id changed, its permanence changed,
  or half of the cookie's lifetime has passed (then the stored "issued" time is renewed
  too); so most responses to a logged-in user carry no ``Set-Cookie``.
  ``SESSION_REFRESH_EACH_REQUEST`` is not used: the TTL slides on every use without it,
  and resending the cookie on every response would make every page uncacheable.
- The cookie is deleted only by the request that destroyed its session (logout, an
  emptied session) or for a value we could never have issued; not because its session
  was gone, which a concurrent login or rotation of the same browser also causes.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from flask_session.base import (  # type: ignore[import-untyped]
    Serializer,
    ServerSideSessionInterface,
)
from flask_session.redis.redis import RedisSessionInterface  # type: ignore[import-untyped]
from itsdangerous import BadSignature, Signer

from ._page_keys import USER_KEY
from ._session_object import TieredSession
from ._session_store import MOVED, Codec, Record, SessionStore, User, check_user, valid_sid

if TYPE_CHECKING:
    from flask import Flask, Request, Response

    from .sessions import SessionUnavailable

_CLOCK_SKEW: Final = 60.0
"""Seconds an "issued" time may lie in the future (another host's clock) and be ours."""


class SafeSerializer(Serializer):  # type: ignore[misc]
    """flask-session's serializer interface on :class:`Codec`: no pickle fallback."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def encode(self, session: Any) -> bytes:
        """The stored bytes of a session's data."""
        return self.codec.encode(Record(dict(dict.items(session))))

    def decode(self, serialized_data: bytes) -> dict[str, Any]:
        """The data in stored bytes.

        :raises tiered_cache._session_store.Undecodable: when they are not a session map.
        """
        return self.codec.decode(serialized_data).data


class TieredSessionInterface(RedisSessionInterface):  # type: ignore[misc]
    """flask-session's Redis session interface on the extension's Redis connection.

    :param app: the app (flask-session's interfaces hold it).
    :param store: the app's :class:`~tiered_cache._session_store.SessionStore`.
    :param clock: epoch seconds; tests may replace the attribute to move time.
    """

    session_class = TieredSession

    def __init__(
        self, app: Flask, store: SessionStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        settings = store.settings
        # Not RedisSessionInterface.__init__: it would replace a cluster client with a
        # localhost one, and warn (an error under -W error) about SESSION_USE_SIGNER.
        ServerSideSessionInterface.__init__(
            self,
            app,
            settings.key_prefix,
            False,
            settings.permanent,
            settings.sid_length,
            settings.serialization_format,
        )
        self.use_signer = settings.use_signer
        self.client = store.tier.client
        self.serializer = SafeSerializer(store.codec)
        self.store = store
        self.clock = clock

    # -- opening: read the cookie, nothing else ---------------------------------------------

    def open_session(self, app: Flask, request: Request) -> TieredSession:
        """The request's session, loaded from Redis on first use."""
        value = request.cookies.get(self.get_cookie_name(app))
        sid = self._cookie_sid(app, value) if value else None
        if sid is None:
            session = TieredSession(self.store.new_sid(), loader=None, permanent=self.permanent)
            session.tc.clear_cookie = bool(value)
            return session
        return TieredSession(sid, loader=self._load)

    def _get_signer(self, app: Flask) -> Signer:
        """flask-session's signer, verifying with ``SECRET_KEY_FALLBACKS`` too (Flask
        3.1's key rotation, as Flask's own cookie session does): signs with
        ``SECRET_KEY``."""
        if not app.secret_key:
            raise KeyError("SECRET_KEY must be set when SESSION_USE_SIGNER=True")
        keys = [*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key]
        return Signer(keys, salt="flask-session", key_derivation="hmac")

    def _cookie_sid(self, app: Flask, value: str) -> str | None:
        """The id in a cookie, when it is one we could have issued."""
        if self.use_signer:
            try:
                value = self._unsign(app, value)
            except BadSignature:
                return None
        return value if valid_sid(value) else None

    def _load(self, session: TieredSession) -> None:
        record = self.store.load(session.sid)
        if isinstance(record, bytes):  # MOVED: this browser has logged in or rotated
            self._left_behind(session)
        elif record is None:
            # Never adopt an id we do not hold (session fixation): start a new one. The
            # cookie is left alone: a login or rotation in a concurrent request of the
            # same browser may have just moved the session, and deleting the cookie here
            # could delete the new one. A dead id in a cookie is harmless.
            session.reset(self.store.new_sid(), permanent=self.permanent)
        else:
            session.fill(record)

    def _left_behind(self, session: TieredSession) -> None:
        """The cookie's session was moved to a new id by another request of the browser:
        this one carries on with an empty session that is never stored and sends no
        cookie (the new one must win)."""
        session.reset(self.store.new_sid(), permanent=self.permanent)
        session.tc.inert = True

    # -- saving ----------------------------------------------------------------------------

    def save_session(self, app: Flask, session: TieredSession, response: Response) -> None:
        """Write what changed, slide nothing more, send the cookie only when due."""
        if session.accessed:
            response.vary.add("Cookie")
        if not isinstance(session, TieredSession) or not session.loaded:
            return  # never used in this request: nothing to write, no cookie to send
        from .sessions import SessionUnavailable

        try:
            self._save(session)
        except SessionUnavailable as exc:
            _unavailable(response, exc)
            if session.tc.cookie_due and session.has_data():
                # A login or rotation already moved the session to its new id in Redis;
                # only the changes made after it are lost. Without the new cookie the
                # browser would keep the old id, now dead: logged out, its data orphaned.
                self._set_cookie(app, session, response)
            return
        except TypeError:
            # A value the format cannot store (the message names it): a 500, as Flask's
            # own session gives. Flask saves the session again for its error page, and
            # that page carries the new cookie of a login or rotation that already moved
            # the session (else the browser keeps the old, dead id: logged out).
            if session.tc.cookie_due and session.has_data():
                self._set_cookie(app, session, response)
            if session.tc.unsavable:
                return
            session.tc.unsavable = True
            raise
        if session.tc.cookie_due and session.has_data():
            self._set_cookie(app, session, response)
        elif session.tc.clear_cookie:
            self._delete_cookie(app, response)

    def _save(self, session: TieredSession) -> None:
        """The Redis side of saving; sets ``cookie_due`` / ``clear_cookie``."""
        state = session.tc
        if state.inert:
            return  # the browser's new cookie must win: nothing stored, nothing sent
        if not session.has_data():
            if state.stored and session.modified:  # emptied: flask-session deletes it
                deleted = self.store.delete_emptied(session.sid, state.user)
                session.reset(self.store.new_sid(), permanent=False, clear_cookie=deleted)
            return
        now = self.clock()
        # A session made permanent ("remember me") or not any more needs its cookie sent
        # again, with an expiry date or without one.
        permanence_changed = session.is_permanent() != state.permanent
        if not state.stored:
            created = self.store.create(session.sid, session.record(now))
            self._written(session, created, now, rescored=False)
            state.cookie_due = state.stored
        elif self._renewal_due(session, now):
            self._renew(session, now)
        elif session.modified:
            record = session.record(state.issued)
            if self.store.codec.encode(record) == state.raw:
                # "Changed" to what it held (``session.permanent = True`` in a hook on
                # every request): not rewritten, which would also undo a concurrent
                # request's real change.
                session.modified = False
            else:
                updated = self.store.update(session.sid, record)
                self._written(session, updated, state.issued, rescored=False)
        state = session.tc  # a write recorded the permanence it stored
        written = state.permanent == session.is_permanent()
        state.cookie_due = state.cookie_due or (permanence_changed and written)

    def _renew(self, session: TieredSession, now: float) -> None:
        """Renew the stored "issued" time and the cookie (and write what changed).

        An unchanged session whose renewal fails loses nothing (its load slid the TTL):
        the response stands, and renews the cookie all the same. The renewal may have
        run although its reply was lost to a timeout; then the stored time is now, and
        the next renewal falls due only after the browser's old cookie expired, a silent
        logout. A cookie renewed now never outlives the stored session, whose TTL the
        load slid. A changed session whose renewal fails is a 503.
        """
        from .sessions import SessionUnavailable

        state = session.tc
        loaded = None if session.modified else state.raw
        try:
            found = self.store.renew(session.sid, session.record(now), loaded=loaded, now=now)
        except SessionUnavailable as exc:
            if session.modified:
                raise
            self.store.warn("session-renew", "session renewal failed: %r", exc)
            state.issued = now
            state.cookie_due = state.cookie_due or session.is_permanent()
            return
        if found is True:  # changed by another request: the next one renews it
            return
        raw = found or None
        self._written(session, raw, now, rescored=True)
        state.cookie_due = state.cookie_due or (raw is not None and session.is_permanent())

    def _written(
        self, session: TieredSession, raw: bytes | None, issued: float | None, *, rescored: bool
    ) -> None:
        """Record a write's outcome; ``rescored``: it scored the index entry anew."""
        state = session.tc
        if raw is None:  # gone (revoked in flight): the cookie must not be renewed
            state.stored = state.cookie_due = False
            return
        state.stored, state.raw, state.issued = True, raw, issued
        if rescored and state.user is not None:
            state.index_ttl = self.store.index_ttl
        state.permanent = session.is_permanent()
        session.modified = False

    def _renewal_due(self, session: TieredSession, now: float) -> bool:
        """Half of the cookie's lifetime has passed, or the session's index entry may
        expire before the session: reissue the cookie, renew the index entry.

        Nothing is due for an anonymous non-permanent session: its cookie has no expiry
        date and it is in no index.
        """
        state = session.tc
        if state.user is None and not session.is_permanent():
            return False
        if state.issued is None:
            return True
        if state.user is not None and (
            state.index_ttl is None or state.issued + state.index_ttl < now + self.store.ttl
        ):
            # Its index entry could expire before the session, whose load slid its TTL
            # to this app's lifetime: written by an app with a shorter one (the setting
            # was raised since), or before entries carried theirs. Out of the index,
            # revoke_user would miss it.
            return True
        # Issued in the future beyond any clock skew between hosts: not by us.
        age = now - state.issued
        return age >= self.store.ttl / 2 or age < -_CLOCK_SKEW

    def _set_cookie(self, app: Flask, session: TieredSession, response: Response) -> None:
        issued = session.tc.issued
        expires = None
        if session.is_permanent() and issued is not None:
            expires = datetime.datetime.fromtimestamp(issued + self.store.ttl, datetime.UTC)
        response.set_cookie(
            self.get_cookie_name(app),
            self._sign(app, session.sid) if self.use_signer else session.sid,
            expires=expires,
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            partitioned=self.get_cookie_partitioned(app),
        )
        response.vary.add("Cookie")

    def _delete_cookie(self, app: Flask, response: Response) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            partitioned=self.get_cookie_partitioned(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )
        response.vary.add("Cookie")

    # -- login, rotate, logout ----------------------------------------------------------------

    def login(self, session: TieredSession, user_id: User) -> None:
        """Rotate ``session`` to a new id under ``user_id``, keeping its data.

        :raises SessionUnavailable: on an outage (nothing changed).
        """
        user = check_user(user_id)
        session.get(USER_KEY)  # loads it (or raises) and marks it used
        now = self.clock()
        data = dict(dict.items(session))
        data[USER_KEY] = user
        record = self.store.scored(Record(data, now, user))
        old = session.sid if session.tc.stored else None
        new = self.store.new_sid(user)
        # A login is a new authentication: it succeeds even if the old session was
        # revoked meanwhile (unlike rotate).
        raw = self.store.rotate(old, new, record, keep_only_if_alive=False, now=now)
        if raw is None:
            raise RuntimeError("a freshly drawn session id was taken; try again")
        session.moved(new, record, raw)

    def rotate(self, session: TieredSession) -> None:
        """Give ``session`` a new id, same data; a session revoked meanwhile stays dead."""
        session.get(USER_KEY)
        state = session.tc
        new = self.store.new_sid(state.user)
        if not state.stored:
            session.sid = new
            return
        now = self.clock()
        record = self.store.scored(session.record(now))
        raw = self.store.rotate(session.sid, new, record, keep_only_if_alive=True, now=now)
        if raw is None:  # revoked meanwhile: it stays dead
            session.reset(self.store.new_sid(), permanent=self.permanent)
        elif raw is MOVED:  # a concurrent login or rotation moved it, as _load can find
            self._left_behind(session)
        else:
            session.moved(new, record, raw)

    def regenerate(self, session: TieredSession) -> None:
        """flask-session's name for :meth:`rotate`."""
        self.rotate(session)

    def logout(self, session: TieredSession) -> None:
        """Destroy the stored session; the response clears the cookie."""
        if session.tc.failure is not None:
            raise session.tc.failure
        if not session.loaded:  # unread: the cookie's id is all there is to delete
            self.store.delete(session.sid, None)
        elif session.tc.stored:
            self.store.delete(session.sid, session.tc.user)
        session.reset(self.store.new_sid(), permanent=self.permanent, clear_cookie=True)
        session.accessed = True

    def revoke_user(self, user_id: User) -> int:
        """Destroy every session of ``user_id``; how many were alive."""
        return self.store.revoke(check_user(user_id))

    # -- flask-session's storage methods, on the store --------------------------------------

    def _retrieve_session_data(self, store_id: str) -> dict[str, Any] | None:
        record = self.store.load(self._sid_of(store_id))
        return record.data if isinstance(record, Record) else None

    def _delete_session(self, store_id: str) -> None:
        self.store.delete(self._sid_of(store_id), None)

    def _upsert_session(self, session_lifetime: Any, session: Any, store_id: str) -> None:
        record = Record(dict(dict.items(session)), self.clock())
        sid = self._sid_of(store_id)
        if self.store.update(sid, record) is None:
            self.store.create(sid, record)

    def _sid_of(self, store_id: str) -> str:
        return store_id.removeprefix(self.store.settings.key_prefix)


_EXCHANGE: Final = ("access-control-", "timing-allow-origin", "x-ratelimit-", "ratelimit", "vary")
"""The headers a session's 503 keeps from the response it replaces (by lower-case prefix)."""


def _unavailable(response: Response, exc: SessionUnavailable) -> None:
    """Turn the response into the 503 of ``exc``: its session changes were not saved.

    Of the response's headers only those about the exchange stay (CORS, without which a
    browser hides the 503 from the page that asked; rate-limit figures; ``Vary``); those
    about the replaced body (its type, length, validators, ``Set-Cookie``) go.
    """
    body = response.response
    close = getattr(body, "close", None)
    if close is not None:
        close()
    response.status_code = exc.code or 503
    kept = [(k, v) for k, v in response.headers.items() if k.lower().startswith(_EXCHANGE)]
    response.headers.clear()
    for name, value in [*kept, *exc.get_headers()]:
        response.headers.add(name, value)
    response.direct_passthrough = False
    response.set_data(exc.get_body())
