"""Where sessions live in Redis: settings, key layout, safe encoding, every Redis call.

Keys (``SESSION_KEY_PREFIX`` keeps flask-session's meaning and default, ``session:``):

- ``{prefix}{sid}``: one session, a msgpack (or JSON) map, with a TTL of
  ``PERMANENT_SESSION_LIFETIME``. An anonymous session's id is a random token
  (``secrets.token_urlsafe(SESSION_ID_LENGTH)``); a logged-in session's id starts with its
  user's hash tag, ``{xxxx}`` (16 bits of a BLAKE2b digest of the user id), so that on a
  Redis Cluster all of a user's sessions and their index share one slot. The tag is in
  the cookie; it only says which of 65,536 buckets the user falls in.
- ``{prefix}{xxxx}#user:{user}``: the user's index, a sorted set of session ids scored by
  the time after which that session is surely dead.

The index stays small: an entry is scored two lifetimes after its cookie was issued
(a session outlives that time by at most half a lifetime plus its last TTL, since the
first request past half the cookie's lifetime renews both cookie and entry); every write
to the index prunes what is past its score and raises the index's TTL to two lifetimes,
so it expires with the last of its sessions.

On a Redis Cluster, a login from an anonymous session moves it to the user's slot: the
old key is deleted first, by a call of its own, then the new one is written and indexed
by one script. Everything else about one session, and ``revoke_user``, is one script or
one pipeline on one slot.

Neither lives under the cache's ``{prefix}:{version}:``: ``flask tiered-cache clear`` and a
schema version bump do not log anyone out.

The stored map is the session's data plus one reserved key, :data:`META_KEY`, holding
``{"t": when the cookie was last issued (epoch seconds), "u": the user given to login}``;
the session object never shows it. Bytes are decoded by msgspec (the configured format,
then the other one, so a change of ``SESSION_SERIALIZATION_FORMAT`` keeps sessions) and
never by pickle.

Every call goes through the cache's :class:`~tiered_cache.redis_tier.RedisTier`: its short
socket timeout, no retries, and its circuit breaker. An outage raises
:class:`~tiered_cache.sessions.SessionUnavailable` (a 503).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import msgspec
import redis

from .errors import CacheUnavailable, ConfigurationError
from .keys import encode_key
from .redis_tier import UNAVAILABLE, RedisTier, get_reply, lua_source
from .sessions import SessionUnavailable

T = TypeVar("T")
User = str | int

META_KEY: Final = "__tiered_cache__"
"""The reserved key of the stored map that holds the session's bookkeeping."""

MOVED: Final = b"\x00tiered_cache: moved to a new id until "
"""How what a login or rotation leaves under the old id begins (bytes no session encodes
to), followed by the epoch second until which it holds; :meth:`SessionStore.load` returns
it for a session moved that recently."""
MOVED_TTL: Final = 30
"""Seconds the marker holds: longer than any request that still carries the old cookie.
(A load slides the key's TTL like any session's, so the time is in the value.)"""

_LATEST_ISSUED: Final = 32_503_680_000.0
"""3000-01-01 in epoch seconds: a later "issued" time was not written by us."""

MIN_SID_BYTES: Final = 16
MAX_SID_BYTES: Final = 256
"""256 bytes are 342 characters in a cookie: within what :data:`_SID` accepts."""
# A logged-in id is "{xxxx}" + token; a token is token_urlsafe's alphabet. Anything else
# in a cookie is not one of our ids: it is ignored rather than looked up.
_SID = re.compile(r"(?:\{[0-9a-f]{4}\})?[A-Za-z0-9_-]{16,400}")


# -- settings -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """flask-session's ``SESSION_*`` keys and Flask's lifetime, validated at ``init_app``."""

    key_prefix: str = "session:"
    permanent: bool = True
    sid_length: int = 32
    serialization_format: str = "msgpack"
    use_signer: bool = False
    lifetime: int = 31 * 24 * 3600
    """``PERMANENT_SESSION_LIFETIME`` in whole seconds: the TTL and the cookie's age."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, has_secret: bool) -> SessionSettings:
        """Read and check the settings.

        :param config: ``app.config``.
        :param has_secret: whether the app has a ``SECRET_KEY`` (needed by the signer).
        :raises ConfigurationError: naming the first bad key and its value.
        """
        _check_backend(config)
        d = cls()
        settings = cls(
            key_prefix=_read(config, "SESSION_KEY_PREFIX", d.key_prefix, _key_prefix),
            permanent=_read(config, "SESSION_PERMANENT", d.permanent, _flag),
            sid_length=_read(config, "SESSION_ID_LENGTH", d.sid_length, _sid_length),
            serialization_format=_read(
                config, "SESSION_SERIALIZATION_FORMAT", d.serialization_format, _format
            ),
            use_signer=_read(config, "SESSION_USE_SIGNER", d.use_signer, _flag),
            lifetime=_read(config, "PERMANENT_SESSION_LIFETIME", d.lifetime, _lifetime),
        )
        if settings.use_signer and not has_secret:
            raise ConfigurationError("SESSION_USE_SIGNER", True, "it needs SECRET_KEY")
        return settings


def _check_backend(config: Mapping[str, Any]) -> None:
    """Refuse flask-session settings that would pick another store than ours."""
    kind = config.get("SESSION_TYPE")
    if kind is not None and str(kind).lower() != "redis":
        raise ConfigurationError(
            "SESSION_TYPE", kind, "TIERED_CACHE_SESSIONS stores sessions in Redis; remove it"
        )
    if config.get("SESSION_REDIS") is not None:
        raise ConfigurationError(
            "SESSION_REDIS",
            config["SESSION_REDIS"],
            "sessions use the extension's connection (TIERED_CACHE_REDIS_URL); remove it",
        )


def _read(config: Mapping[str, Any], key: str, default: T, parse: Callable[[Any], T]) -> T:
    if key not in config:
        return default
    try:
        return parse(config[key])
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(key, config[key], str(exc)) from None


def _key_prefix(value: Any) -> str:
    if not isinstance(value, str) or "{" in value or "}" in value:
        raise ValueError("expected a string without '{' or '}' (the hash tags are ours)")
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected a boolean")


def _sid_length(value: Any) -> int:
    if isinstance(value, bool) or not MIN_SID_BYTES <= int(value) <= MAX_SID_BYTES:
        raise ValueError(f"expected {MIN_SID_BYTES} to {MAX_SID_BYTES} (bytes of randomness)")
    return int(value)


def _format(value: Any) -> str:
    if value not in ("msgpack", "json"):
        raise ValueError("expected 'msgpack' or 'json'")
    return str(value)


def _lifetime(value: Any) -> int:
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 1:
        raise ValueError("expected at least one second (a timedelta or seconds)")
    return int(seconds)


# -- ids and keys ---------------------------------------------------------------------------


def user_tag(user: User) -> str:
    """The hash tag shared by a user's session ids and index: ``{xxxx}``."""
    digest = hashlib.blake2b(str(user).encode("utf-8", "surrogatepass"), digest_size=2)
    return "{" + digest.hexdigest() + "}"


def check_user(user: Any) -> User:
    """A user id as login and revoke take it: a string or an int.

    :raises TypeError: for anything else (it is stored in the session and names the index).
    """
    if isinstance(user, bool) or not isinstance(user, str | int):
        raise TypeError(f"a user id is a str or an int, not {type(user).__name__}: {user!r}")
    return user


def valid_sid(sid: str) -> bool:
    """Whether ``sid`` has the shape of an id we issue (cookies are client input)."""
    return _SID.fullmatch(sid) is not None


# -- the stored form --------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Record:
    """A session as stored: its data, when its cookie was issued, its user, its bytes."""

    data: dict[str, Any]
    issued: float | None = None
    user: User | None = None
    raw: bytes = b""
    index_ttl: float | None = None
    """For a user's session: the index TTL its entry in the user's index was last scored
    with (by a login, rotation or renewal), so that entry lasts at least until
    ``issued + index_ttl``. A write that does not score the entry carries it over."""


class Undecodable(Exception):
    """Bytes under a session key that are not a session of ours."""


class Codec:
    """msgspec msgpack or JSON, both ways; nothing here can run code while decoding."""

    def __init__(self, fmt: str) -> None:
        msgpack, json = msgspec.msgpack, msgspec.json
        self._encode = msgpack.Encoder().encode if fmt == "msgpack" else json.Encoder().encode
        decoders = (msgpack.Decoder().decode, json.Decoder().decode)
        self._decoders = decoders if fmt == "msgpack" else decoders[::-1]

    def encode(self, record: Record) -> bytes:
        """The stored bytes of ``record`` (its ``raw`` is not used).

        :raises TypeError: when the data holds a value the format cannot encode.
        """
        meta: dict[str, Any] = {"t": record.issued, "u": record.user}
        if record.user is not None and record.index_ttl is not None:
            meta["l"] = record.index_ttl
        odd = [key for key in record.data if not isinstance(key, str)]
        if odd:  # it would be written, then refused by every read (None included)
            raise TypeError(f"session keys are strings, not {type(odd[0]).__name__}: {odd[0]!r}")
        try:
            return self._encode({**record.data, META_KEY: meta})
        except (msgspec.EncodeError, TypeError, OverflowError, RecursionError, UnicodeError) as exc:
            # RecursionError: nested too deep; UnicodeError: a lone surrogate in a string.
            raise TypeError(f"the session cannot be stored: {exc!r}") from exc

    def decode(self, raw: bytes) -> Record:
        """The record in ``raw``.

        :raises Undecodable: when ``raw`` is not a map with string keys in either format.
        """
        for decode in self._decoders:
            try:
                data = decode(raw)
            except (msgspec.DecodeError, RecursionError):  # nested deeper than msgspec goes
                continue
            if isinstance(data, dict) and all(isinstance(key, str) for key in data):
                return _record(data, raw)
            break
        raise Undecodable(f"{len(raw)} bytes that are not a session map")


def _record(data: dict[str, Any], raw: bytes) -> Record:
    meta = data.pop(META_KEY, None)
    if not isinstance(meta, dict):  # written by flask-session itself, say
        return Record(data, raw=raw)
    user = meta.get("u")
    user = user if isinstance(user, str | int) and not isinstance(user, bool) else None
    index_ttl = meta.get("l")
    if not isinstance(index_ttl, int | float) or isinstance(index_ttl, bool):
        index_ttl = None
    return Record(data, _issued(meta.get("t")), user, raw, index_ttl)


def _moved_marker() -> bytes:
    """The marker a login or rotation leaves under the old id now (by the real clock,
    which :meth:`SessionStore.load` compares it with)."""
    return MOVED + str(int(time.time()) + MOVED_TTL).encode()


def _moved_until(raw: bytes) -> int:
    """The epoch second until which a marker holds (0 if it is garbled)."""
    digits = raw[len(MOVED) :]
    return int(digits) if digits.isdigit() and len(digits) < 20 else 0


def _issued(value: object) -> float | None:
    """The stored "issued" time, if it is one we could have written: a finite number of
    epoch seconds before the year 3000 (else None, and the cookie is reissued)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        issued = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return issued if 0 <= issued < _LATEST_ISSUED else None


# -- Redis --------------------------------------------------------------------------------------


class SessionStore:
    """Every Redis operation on sessions, through the cache's error boundary.

    :param tier: the cache's Redis tier (client, short timeouts, breaker).
    :param settings: the app's session settings.
    :param retry_after: seconds for ``Retry-After`` when Redis is unavailable.
    """

    def __init__(self, tier: RedisTier, settings: SessionSettings, *, retry_after: int) -> None:
        self.tier = tier
        self.settings = settings
        self.retry_after = retry_after
        self._log = tier.log  # the cache's: a forked child gets a new lock with it
        self.ttl = settings.lifetime
        # The longest a session can live after the cookie was last issued: the cookie is
        # reissued (and the index renewed) by the first request past half its lifetime,
        # and that request's own access slides the TTL once more: 1.5 lifetimes, plus margin.
        self.index_ttl = 2 * settings.lifetime
        self.codec = Codec(settings.serialization_format)
        client = tier.client
        self._cluster = hasattr(client, "keyslot")
        self._rotate = client.register_script(lua_source("session_rotate.lua"))
        self._store = client.register_script(lua_source("session_store.lua"))
        self._revoke = client.register_script(lua_source("session_revoke.lua"))

    # -- naming ---------------------------------------------------------------------------

    def new_sid(self, user: User | None = None) -> str:
        """A fresh random id; a user's ids carry the user's hash tag."""
        token = secrets.token_urlsafe(self.settings.sid_length)
        return token if user is None else user_tag(user) + token

    def key(self, sid: str) -> str:
        """The Redis key of session ``sid``."""
        return self.settings.key_prefix + sid

    def index(self, user: User) -> str:
        """The Redis key of ``user``'s index (``encode_key`` keeps braces out of it)."""
        return f"{self.settings.key_prefix}{user_tag(user)}#user:{encode_key(str(user))}"

    # -- the calls ------------------------------------------------------------------------

    def warn(self, kind: str, message: str, *args: object) -> None:
        """Log a warning, at most once in a while for each ``kind``."""
        self._log.warning(kind, message, *args)

    def run(self, what: str, call: Callable[[Any], T]) -> T:
        """``call(client)`` through the breaker; an outage is a 503, and so is an error
        reply (an ACL without EVALSHA, say: the server refuses, the session is fine).

        :raises SessionUnavailable: when Redis fails, refuses or the breaker is open.
        """
        try:
            result = self.tier.run(what, call, fail_open=False)
        except CacheUnavailable as exc:
            raise SessionUnavailable(retry_after=self.retry_after) from exc
        except redis.ResponseError as exc:
            self._log.warning("session-refused", "Redis refused the %s: %s", what, exc)
            raise SessionUnavailable(retry_after=self.retry_after) from exc
        if result is UNAVAILABLE:  # pragma: no cover - fail_open=False raises instead
            raise SessionUnavailable(retry_after=self.retry_after)
        return result

    def load(self, sid: str) -> Record | bytes | None:
        """Read session ``sid`` and slide its TTL, in one ``GETEX``.

        :returns: its record; :data:`MOVED` when a login or rotation has just moved it
            to a new id; or None when it does not exist or is not a session of ours
            (logged as a warning: foreign, truncated or tampered bytes).
        :raises SessionUnavailable: on an outage.
        """
        key, ttl = self.key(sid), self.ttl

        # A key that holds a list, say, is unreadable; READONLY after a failover and the
        # like are outages (a 503, not a logout), and so is any other error reply (an ACL
        # without GETEX, say): only the data can make a session unreadable, never silently
        # empty because of the server.
        raw = self.run("session load", lambda client: get_reply(client, key, ex=ttl))
        if raw is None:
            return None
        if isinstance(raw, bytes) and raw.startswith(MOVED):
            # Moved recently: an inert session; long ago: a dead id, like any other.
            return MOVED if _moved_until(raw) > time.time() else None
        if isinstance(raw, redis.ResponseError) and not str(raw).startswith("WRONGTYPE"):
            self._log.warning("session-load", "session %s could not be read: %s", key, raw)
            raise SessionUnavailable(retry_after=self.retry_after) from raw
        try:
            if isinstance(raw, redis.ResponseError):
                raise Undecodable(str(raw))
            return self.codec.decode(raw)
        except Undecodable as exc:
            self._log.warning(
                "session-decode", "session %s is not readable (%s): ignored", key, exc
            )
            return None

    def scored(self, record: Record) -> Record:
        """``record`` as written by a write that scores its user's index entry anew."""
        if record.user is None:
            return record
        return dataclasses.replace(record, index_ttl=self.index_ttl)

    def create(self, sid: str, record: Record) -> bytes | None:
        """Store a new session (``SET NX``).

        :returns: the stored bytes, or None when the id was taken.
        """
        raw, key = self.codec.encode(record), self.key(sid)
        written = self.run("session create", lambda c: c.set(key, raw, nx=True, ex=self.ttl))
        return raw if written else None

    def update(self, sid: str, record: Record) -> bytes | None:
        """Rewrite an existing session: one revoked, or moved to a new id by a login or
        rotation, is never brought back (one script call: ``SET XX`` and the marker check).

        :returns: the stored bytes, or None when the session is gone.
        """
        raw = self.codec.encode(record)
        written = self._rewrite("session save", sid, raw, loaded=None, user=None, now=0)
        return raw if written == 1 else None

    def renew(self, sid: str, record: Record, *, loaded: bytes | None, now: float) -> bytes | bool:
        """Rewrite a session with a new cookie time, renewing its index entry.

        :param loaded: for an unmodified session, the bytes it was loaded from: the write
            only happens if they are still there.
        :returns: the stored bytes; else False when the session is gone (revoked,
            logged out, expired), True when another request changed it meanwhile.
        """
        raw = self.codec.encode(self.scored(record))
        done = self._rewrite("session renew", sid, raw, loaded=loaded, user=record.user, now=now)
        return raw if done == 1 else done == -1

    def _rewrite(
        self,
        what: str,
        sid: str,
        raw: bytes,
        *,
        loaded: bytes | None,
        user: User | None,
        now: float,
    ) -> int:
        """One call of ``lua/session_store.lua``, renewing ``user``'s index entry when
        given (deleting the session and that entry when ``raw`` is empty): 1 written or
        deleted, 0 gone or moved, -1 changed since ``loaded`` (when given)."""
        keys, score = [self.key(sid)], ""
        if user is not None:
            keys.append(self.index(user))
            score = str(int(now) + self.index_ttl)
        args = [raw, self.ttl, loaded or b"", score, sid, int(now), self.index_ttl, MOVED]
        return int(self.run(what, lambda c: self._store(keys, args, client=c)))

    def rotate(
        self, old: str | None, new: str, record: Record, *, keep_only_if_alive: bool, now: float
    ) -> bytes | None:
        """Write ``record`` under ``new`` and mark ``old`` moved (:data:`MOVED`) in the
        same step.

        :param old: the id to retire (None: the session was never stored).
        :param keep_only_if_alive: write nothing when ``old`` no longer exists.
        :returns: the stored bytes; or, with nothing written, :data:`MOVED` itself when
            ``keep_only_if_alive`` found ``old`` moved by a concurrent login or rotation,
            else None (``old`` is gone, or ``new`` was taken).
        """
        raw, new_key = self.codec.encode(self.scored(record)), self.key(new)
        keys, score = [new_key], ""
        if record.user is not None:
            keys.append(self.index(record.user))
            score = str(int(now) + self.index_ttl)
        old_key = None if old is None else self.key(old)
        if old_key is not None and self._cluster and not self._same_slot(old_key, new_key):
            # Another slot: mark it moved first, on its own; a failure after this is a 503
            # with the old id already dead, never a fixation window.
            held = self.run(
                "session rotate",
                lambda c: c.set(old_key, _moved_marker(), ex=MOVED_TTL, xx=True, get=True),
            )
            if keep_only_if_alive and held is None:
                return None
            if keep_only_if_alive and held.startswith(MOVED):
                return MOVED
            old_key, keep_only_if_alive = None, False
        if old_key is not None:
            keys.append(old_key)
        args = [raw, self.ttl, new, old or "", score, int(now)]
        args += ["0" if old_key is None else "1", "1" if keep_only_if_alive else "0"]
        args += [self.index_ttl, MOVED, _moved_marker(), MOVED_TTL]
        done = self.run("session rotate", lambda c: self._rotate(keys, args, client=c))
        return raw if done == 1 else MOVED if done == 2 else None

    def delete(self, sid: str, user: User | None) -> None:
        """Destroy session ``sid`` (and its entry in ``user``'s index, when known)."""
        key = self.key(sid)
        if user is None:
            self.run("session delete", lambda c: c.delete(key))
            return
        index = self.index(user)

        def both(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.delete(key)
            pipe.zrem(index, sid)
            pipe.execute()

        self.run("session delete", both)

    def delete_emptied(self, sid: str, user: User | None) -> bool:
        """Delete session ``sid``, emptied by its request, unless another request of the
        browser moved it to a new id meanwhile (login, rotate): its marker stays.

        :returns: whether a live session was deleted (then the cookie is to be cleared;
            after a move, the browser's new cookie must stay).
        """
        return self._rewrite("session delete", sid, b"", loaded=None, user=user, now=0) == 1

    def revoke(self, user: User) -> int:
        """Destroy every session of ``user`` in one script call; how many there were."""
        keys, args = [self.index(user)], [self.settings.key_prefix, MOVED]
        return int(self.run("session revoke", lambda c: self._revoke(keys, args, client=c)))

    def _same_slot(self, a: str, b: str) -> bool:
        client = self.tier.client
        return bool(client.keyslot(a) == client.keyslot(b))
