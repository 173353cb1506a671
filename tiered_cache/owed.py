"""Invalidations this process owes Redis: deletes and namespace bumps that failed.

A write whose reply was lost (a stall, a timeout) may still run once Redis answers,
while the invalidation that follows it in the same request (a write-through's namespace
bump, a delete) fails, or is never sent: Redis would then keep the new record beside
the old pages, or the old value where the writer's database holds a new one, for their
whole TTL, and no message would ever tell a worker. So a write or an invalidation that
failed is owed: its keys are deleted, and its namespaces bumped, right after this
process's next call that reaches Redis (:meth:`~tiered_cache.Cache._repay`; nothing more
is tried while Redis stays away), with the bus message that drops every worker's copy; a
key written again meanwhile is settled by that write. Paid late, an invalidation costs at
most a miss: a value written meanwhile by someone else is deleted too, and read again
from its source.

What is owed is bounded (:data:`MAX_KEYS` keys, as many namespaces); past it the oldest
are forgotten, and logged. A process that never reaches Redis again owes them for good;
a forked child starts owing nothing (its parent pays its own).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

MAX_KEYS: Final = 10_000


class Owed:
    """The deletes and bumps one process owes; thread-safe."""

    def __init__(self, pause: float, timer: Callable[[], float] = time.monotonic) -> None:
        """:param pause: seconds from a failure (to write, or to pay) to the next try: a
        Redis that answers reads but refuses writes (a replica after a failover) must
        not cost every read a second round trip."""
        self._pause = pause
        self._timer = timer
        self._not_before = 0.0
        self._lock = threading.Lock()
        self._keys: dict[str, None] = {}  # insertion order: the oldest first
        self._names: dict[str, None] = {}
        self.due = False
        """Something is owed (read without the lock, on every call that reaches Redis)."""
        self.forgotten = 0
        """Keys dropped past :data:`MAX_KEYS`."""

    def owe(self, keys: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        """Owe deletes of Redis ``keys`` and bumps of encoded namespace ``names``."""
        with self._lock:
            self._keys.update(dict.fromkeys(keys))
            self._names.update(dict.fromkeys(names))
            for owed in (self._keys, self._names):
                while len(owed) > MAX_KEYS:
                    del owed[next(iter(owed))]
                    self.forgotten += 1
            self.due = bool(self._keys or self._names)
            self._not_before = self._timer() + self._pause

    def settle(self, keys: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        """Owe nothing more for ``keys`` and ``names``: a later write of them (a stored
        value, a delete, a bump) reached Redis."""
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)
            for name in names:
                self._names.pop(name, None)
            self.due = bool(self._keys or self._names)

    def take(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Everything owed, now no longer owed (:meth:`owe` it back if it fails); nothing
        within ``pause`` seconds of the last failure."""
        with self._lock:
            if self._timer() < self._not_before:
                return (), ()
            keys, names = tuple(self._keys), tuple(self._names)
            self._keys.clear()
            self._names.clear()
            self.due = False
        return keys, names
