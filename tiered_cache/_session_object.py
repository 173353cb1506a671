"""The session object: flask-session's ``RedisSession``, loaded on first use.

Flask opens the session at the start of *every* request, so :meth:`open_session` only
reads the cookie; Redis is asked (one ``GETEX``, which also slides the TTL) the first
time the request reads or writes the session. A request that never touches it costs no
Redis call and is served while Redis is down.

``session.sid`` is the cookie's id until the session is first used (reading it loads
nothing, so logging it costs no Redis call); the first use replaces an id no stored
session holds with a new one, so code that keys its own data by the id reads the
session first.

Every read marks the session ``accessed``: flask-session's ``ServerSideSession`` marks
only ``[]``, ``get`` and ``setdefault``, so ``key in session``, iteration, ``len`` and
the rest are covered here (Flask 3.1 also marks it on every use of the ``session``
proxy, but code holding the object itself must count too). ``repr`` does not load: a
debugger or a log line should not cost a Redis call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask_session.redis.redis import RedisSession  # type: ignore[import-untyped]

from ._session_store import Record, User

if TYPE_CHECKING:
    from .sessions import SessionUnavailable

PERMANENT = "_permanent"


@dataclasses.dataclass(slots=True)
class SessionState:
    """The bookkeeping of one request's session (never part of its data)."""

    stored: bool = False
    """A record exists in Redis under the session's id (as of the last load or write)."""
    issued: float | None = None
    """When the cookie was last issued (epoch seconds), as stored."""
    user: User | None = None
    """The user given to ``login`` (names the index the id is listed in)."""
    index_ttl: float | None = None
    """The index TTL its entry in the user's index was last scored with (see
    ``Record.index_ttl``)."""
    raw: bytes | None = None
    """The stored bytes as loaded or last written."""
    permanent: bool = False
    """Whether the stored record is permanent (its cookie was sent with an expiry date)."""
    cookie_due: bool = False
    """The id changed (login, rotate): the cookie must be sent."""
    clear_cookie: bool = False
    """The client's cookie names no live session (logged out, revoked, expired, bogus)."""
    inert: bool = False
    """The cookie's session was just moved to a new id by a login or rotation in another
    request of the same browser: this request's session is empty, never stored, and
    sends no cookie (which would replace the new one)."""
    failure: SessionUnavailable | None = None
    """Redis failed while loading: every later use fails the same way."""
    unsavable: bool = False
    """Saving raised (a value the format cannot encode): the request's 500 is under way."""


class TieredSession(RedisSession):  # type: ignore[misc]
    """A server-side session that loads itself from Redis when first used.

    :param sid: the session id (from the cookie, or a new one).
    :param loader: called with the session on first use to fill it; None for a session
        that has nothing stored (a new one).
    :param permanent: for a new session, ``SESSION_PERMANENT``.
    """

    __hash__ = None  # type: ignore[assignment]  # a dict: unhashable, like its base

    def __init__(
        self,
        sid: str,
        *,
        loader: Callable[[TieredSession], None] | None,
        permanent: bool = True,
    ) -> None:
        super().__init__(None, sid=sid)
        self.tc = SessionState()
        self._loader = loader
        if loader is None:
            self.reset(sid, permanent=permanent)

    # -- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the data is known (loaded, or new): only then is there anything to save."""
        return self._loader is None and self.tc.failure is None

    def _ready(self) -> None:
        """Mark the session used and load it if it is not yet."""
        self.accessed = True
        if self._loader is not None:
            self._load()

    def _load(self) -> None:
        if self.tc.failure is not None:
            raise self.tc.failure
        from .sessions import SessionUnavailable

        loader = self._loader
        assert loader is not None
        try:
            loader(self)
        except SessionUnavailable as exc:
            self.tc.failure = exc
            raise
        self._loader = None

    def fill(self, record: Record) -> None:
        """Take the data and bookkeeping of a stored record (no change is recorded)."""
        dict.clear(self)
        dict.update(self, record.data)
        self.tc = SessionState(
            stored=True,
            issued=record.issued,
            user=record.user,
            index_ttl=record.index_ttl,
            raw=record.raw,
            permanent=bool(record.data.get(PERMANENT, False)),
        )
        self._loader = None
        self.modified = False

    def reset(self, sid: str, *, permanent: bool, clear_cookie: bool = False) -> None:
        """Become a new, empty session under ``sid`` (nothing stored yet)."""
        dict.clear(self)
        if permanent:
            dict.__setitem__(self, PERMANENT, True)
        self.sid = sid
        self.tc = SessionState(clear_cookie=clear_cookie)
        self._loader = None
        self.modified = False

    def moved(self, sid: str, record: Record, raw: bytes) -> None:
        """The session now lives under ``sid``, stored as ``raw`` (login, rotate), as
        ``record`` (its index entry scored as the record says)."""
        self.fill(dataclasses.replace(record, raw=raw))
        self.sid = sid
        self.tc.cookie_due = True
        self.accessed = True

    def record(self, issued: float | None) -> Record:
        """The session as it is to be stored, with the cookie time ``issued``."""
        return Record(dict(dict.items(self)), issued, self.tc.user, index_ttl=self.tc.index_ttl)

    def has_data(self) -> bool:
        """Whether there is anything besides ``_permanent``, without marking it used."""
        keys: Iterator[str] = iter(dict.keys(self))
        return any(key != PERMANENT for key in keys)

    def is_permanent(self) -> bool:
        """``permanent``, without marking the session used (the interface's bookkeeping)."""
        return bool(dict.get(self, PERMANENT, False))

    # -- reads: load, mark accessed -----------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self._ready()
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        self._ready()
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        self._ready()
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._ready()
        return dict.__iter__(self)

    def __reversed__(self) -> Iterator[str]:
        self._ready()
        return dict.__reversed__(self)

    def __len__(self) -> int:
        self._ready()
        return dict.__len__(self)

    def __bool__(self) -> bool:
        self._ready()
        return self.has_data()

    def keys(self) -> Any:
        self._ready()
        return dict.keys(self)

    def values(self) -> Any:
        self._ready()
        return dict.values(self)

    def items(self) -> Any:
        self._ready()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self._ready()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._ready()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._ready()
        return dict.__ne__(self, other)

    def __or__(self, other: Any) -> Any:
        self._ready()
        return dict.__or__(self, other)

    def __ror__(self, other: Any) -> Any:
        self._ready()
        return dict.__ror__(self, other)

    @property
    def permanent(self) -> bool:
        """``_permanent`` (a read: loads the session and marks it used)."""
        self._ready()
        return self.is_permanent()

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self["_permanent"] = bool(value)

    @property
    def new(self) -> bool:
        """True while nothing is stored for this session (a read: loads it)."""
        self._ready()
        return not self.tc.stored

    # -- writes: load first (the change applies to the stored data) --------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        self._ready()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._ready()
        super().__delitem__(key)

    def __ior__(self, other: Any) -> TieredSession:
        self._ready()
        return super().__ior__(other)  # type: ignore[no-any-return]

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._ready()
        return super().setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        self._ready()
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._ready()
        return super().popitem()  # type: ignore[no-any-return]

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._ready()
        super().update(*args, **kwargs)

    def clear(self) -> None:
        """Empty the session but for ``_permanent`` (as flask-session does)."""
        self._ready()
        super().clear()

    def __repr__(self) -> str:
        if self._loader is not None:
            return f"<{type(self).__name__} {self.sid!r} (not loaded)>"
        return f"<{type(self).__name__} {self.sid!r} {dict.__repr__(self)}>"
