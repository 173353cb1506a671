"""Single-flight: one loader per key, in this process and across processes.

In a process, the first caller of a missing key becomes the leader of a :class:`Flight`;
later callers wait on it and share its outcome, value or exception (the pattern of
cachetools' ``cached`` with a per-key condition).

Across processes, the leader takes a Redis token lock (``SET NX PX`` with a random
token) and stores what it loaded with ``lua/store_if_held.lua``, which also releases
the lock, pipelined with the announcement. Leaders of other processes that fail to take
it register a :class:`Waiters` event for the data key and sleep until the invalidation
bus announces the key (the value landed, or its loader failed), not in a polling loop.

Every other write of the key (``set``, ``delete``, ...) :func:`overtakes <overtake>` a
load in flight: the loader read its source before that write, so its value is not
stored over it (the cache-aside race, where a delete after a database update is undone
by a read that began before the update). Not on a Redis Cluster, whose pipelines refuse
scripts and whose scripts cannot touch two slots: there a loader's value is stored and
its lock released as two commands, and no write marks a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Any

from .keys import KeyLayout
from .redis_tier import Client, lua_source


def _sent(source: str) -> str:
    """A script without its comment lines: EVAL sends its text with every call."""
    return "\n".join(line for line in source.splitlines() if line and not line.startswith("--"))


RELEASE_SCRIPT = _sent(lua_source("release.lua"))
STORE_IF_HELD_SCRIPT = _sent(lua_source("store_if_held.lua"))
OVERTAKE_SCRIPT = _sent(lua_source("overtake.lua"))
ADD_SCRIPT = _sent(lua_source("add.lua"))


class Flight:
    """One in-process computation that several threads wait for."""

    __slots__ = ("done", "error", "followers", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.followers = 0


class Flights:
    """The computations in progress in this process, one per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, Flight] = {}

    def join(self, key: Hashable) -> tuple[Flight, bool]:
        """Return the flight of ``key`` and whether the caller leads it."""
        with self._lock:
            flight = self._pending.get(key)
            if flight is not None:
                flight.followers += 1
                return flight, False
            flight = self._pending[key] = Flight()
            return flight, True

    def land(
        self, key: Hashable, flight: Flight, value: Any = None, error: BaseException | None = None
    ) -> bool:
        """Publish the leader's outcome to its followers and retire the flight.

        :returns: whether any caller followed it (none can join once it has landed).
        """
        flight.value = value
        flight.error = error
        with self._lock:
            if self._pending.get(key) is flight:
                del self._pending[key]
            followed = flight.followers > 0
        flight.done.set()
        return followed


class Waiters:
    """Threads of this process waiting for another process to store a key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[threading.Event]] = {}

    def register(self, gkey: str) -> threading.Event:
        """Return an event that :meth:`wake` sets when ``gkey`` is announced."""
        event = threading.Event()
        with self._lock:
            self._events.setdefault(gkey, []).append(event)
        return event

    def unregister(self, gkey: str, event: threading.Event) -> None:
        """Forget an event registered for ``gkey``."""
        with self._lock:
            events = self._events.get(gkey)
            if events is not None:
                events.remove(event)
                if not events:
                    del self._events[gkey]

    def wake(self, gkeys: tuple[str, ...]) -> None:
        """Set every event registered for any of ``gkeys``."""
        if not self._events:
            return
        with self._lock:
            events = [e for k in gkeys for e in self._events.get(k, ())]
        for event in events:
            event.set()

    def wake_all(self) -> None:
        """Set every event (after a bus reconnect messages may have been lost)."""
        with self._lock:
            events = [e for group in self._events.values() for e in group]
        for event in events:
            event.set()


def release(client_or_pipe: Client, lock_key: str, token: bytes) -> Any:
    """Queue (on a pipeline) or run the compare-and-delete release of a lock
    (``lua/release.lua``: redis-py's, which also clears our token's overtaken mark).

    ``EVAL``, not a registered script: redis-py checks ``SCRIPT EXISTS`` before every
    pipeline that holds a registered script, an extra round trip each time; Redis caches
    the compiled script by its digest, so EVAL costs only the few bytes of its text.
    """
    return client_or_pipe.eval(RELEASE_SCRIPT, 1, lock_key, token)


def overtake(pipe: Any, gkeys: Iterable[str]) -> None:
    """Queue the marks that stop loads of ``gkeys`` in flight from storing their values
    (``lua/overtake.lua``; a no-op for a key no loader holds). Not on a Cluster
    pipeline, which refuses scripts."""
    for gkey in gkeys:
        pipe.eval(OVERTAKE_SCRIPT, 1, KeyLayout.flight_lock(gkey))


def store_if_held(
    pipe: Any, gkey: str, lock: tuple[str, bytes], data: bytes, px: int | None
) -> None:
    """Queue a loader's write of ``data``, made only while no write has overtaken it
    (``lua/store_if_held.lua``: its reply is 1 when stored, 0 when not).

    :param lock: the key's single-flight lock and the loader's token.
    """
    lock_key, token = lock
    pipe.eval(STORE_IF_HELD_SCRIPT, 2, gkey, lock_key, token, data, "" if px is None else px)


def add(pipe: Any, gkey: str, data: bytes, px: int | None) -> None:
    """Queue ``add``'s write (``lua/add.lua``): ``data`` stored only if ``gkey`` holds
    nothing, overtaking a load in flight only then (its reply: 1 when stored). Not on a
    Cluster pipeline, which refuses scripts."""
    lock_key = KeyLayout.flight_lock(gkey)
    pipe.eval(ADD_SCRIPT, 2, gkey, lock_key, data, "" if px is None else px)
