"""L1: the in-process tier, holding decoded values with item and byte bounds.

Two backends share one interface, :class:`L1Store`:

- ``"lru"``, hand-written on :class:`collections.OrderedDict`. Its ``peek`` and ``touch``
  *are* the dict's bound C methods ``get`` and ``move_to_end``: an L1 hit runs no Python
  frame of this module and takes no lock. Each of those calls is atomic under the GIL,
  so they may run concurrently with the mutations below, which all take one lock. (This
  holds while keys hash and compare in C: str, bytes, int, and tuples of those.)
- ``"cachetools"``, the same contract over :class:`cachetools.LRUCache`
  (:mod:`tiered_cache.l1_cachetools`). cachetools is not thread-safe, so there ``peek``
  and ``touch`` take the lock as well.

Neither checks expiry: the cache compares ``Entry.expires`` itself, on a clock it owns.

**No stale refill.** A reader that misses L1 reads Redis and then fills L1, but an
invalidation (a bus message, a local write, a clear) can arrive while its read is in
flight, and the value it read may be the one that was just invalidated. So the reader
calls ``since = l1.begin()`` *before* its Redis read, ``fill(key, entry, since)`` after,
and ``end(since)`` when done; every invalidation bumps the sequence and, while reads are
in flight, leaves a tombstone ``gkey -> seq``; ``fill`` refuses, atomically with respect
to invalidations, when the tombstone of ``entry.gkey`` (or a clear) is newer than
``since``.

A tombstone matters only to reads that began before it, so tombstones are dropped as
soon as every such read has ended: their number follows how many reads are in flight,
not how fast keys are written (a burst of 100k writes with no read in flight leaves
none). ``max_tombstones`` bounds them all the same; when the oldest are dropped early,
fills that began before them are refused, a few refused fills, never a stale one.

A local write (``put``) counts as an invalidation of its key, so a slower reader holding
an older value cannot fill over it; a writer that passes the ``since`` it took before its
Redis write is refused, like a reader, when another invalidation of that key arrived
meanwhile (another worker's write may have landed after its own).

Each Redis key (``gkey``) has at most one local copy: storing it under a new local key
drops the old one, so ``invalidate(gkey)`` finds the copy whatever local key holds it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, Protocol, final

from .copying import Copier
from .errors import ConfigurationError

__all__ = ["L1_BACKENDS", "Entry", "L1Store", "Reading", "make_l1"]

#: The accepted values of ``TIERED_CACHE_L1_BACKEND``, default first.
L1_BACKENDS: Final = ("lru", "cachetools")


@final
class Entry:
    """One value held in L1, created when it is filled and read on every hit.

    Treat an entry as immutable once it is stored: the store accounts for its ``size``
    and indexes its ``gkey``.

    :param value: the decoded object.
    :param copy: how a read copies ``value`` (see :func:`tiered_cache.copying.copier_for`),
        or ``None`` to hand it out as it is.
    :param expires: the monotonic time after which this local copy must not be served.
    :param stored: the monotonic time it was filled.
    :param size: bytes charged to the byte budget (the caller derives it from the
        serialized length); must not be negative.
    :param gkey: the global key (the Redis key) this local copy mirrors.
    """

    __slots__ = ("copy", "expires", "gkey", "size", "stored", "value")

    value: Any
    copy: Copier | None
    expires: float
    stored: float
    size: int
    gkey: str

    # Positional like the slots it fills: one is built on every fill, and the cache
    # constructs it in one place.
    def __init__(  # noqa: PLR0917
        self,
        value: Any,
        copy: Copier | None,
        expires: float,
        stored: float,
        size: int,
        gkey: str,
    ) -> None:
        self.value = value
        self.copy = copy
        self.expires = expires
        self.stored = stored
        self.size = size
        self.gkey = gkey

    def __repr__(self) -> str:
        return (
            f"Entry(gkey={self.gkey!r}, size={self.size}, expires={self.expires:.3f}, "
            f"stored={self.stored:.3f}, value={type(self.value).__qualname__})"
        )


@final
class Reading:
    """``with store.reading() as since:`` brackets a Redis read that may fill L1."""

    __slots__ = ("_store", "since")

    def __init__(self, store: L1Store) -> None:
        self._store = store
        self.since = 0

    def __enter__(self) -> int:
        self.since = self._store.begin()
        return self.since

    def __exit__(self, *exc_info: object) -> None:
        self._store.end(self.since)


class L1Store(Protocol):
    """The interface of both L1 backends.

    ``peek(key)`` returns the entry under a local key or ``None``, without checking expiry
    and without counting as a use. ``touch(key)`` marks it recently used and may raise
    :class:`KeyError` if it has just gone. Both are plain attributes so the cache can bind
    them once.
    """

    peek: Callable[[Hashable], Entry | None]
    touch: Callable[[Hashable], None]
    max_items: int
    max_bytes: int
    entry_overhead: int
    """Bytes this store keeps per entry besides the entry itself (for the byte budget)."""

    @property
    def seq(self) -> int:
        """The invalidation sequence number."""
        ...

    def begin(self) -> int:
        """Register a Redis read (or write) whose result may fill L1; return its ``since``.

        Every call must be paired with :meth:`end`.
        """
        ...

    def end(self, since: int) -> None:
        """Unregister a read begun with :meth:`begin`; tombstones no read needs are dropped."""
        ...

    def reading(self) -> Reading:
        """:meth:`begin` and :meth:`end` as a context manager."""
        ...

    @property
    def nbytes(self) -> int:
        """The bytes charged by the entries held now."""
        ...

    @property
    def evictions(self) -> int:
        """How many entries were dropped to respect the bounds."""
        ...

    def __len__(self) -> int:
        """The number of entries held."""
        ...

    def put(self, key: Hashable, entry: Entry, since: int | None = None) -> bool:
        """Store a locally written value, which counts as an invalidation of ``entry.gkey``.

        The invalidation comes first, so a slower concurrent reader holding an older value
        cannot :meth:`fill` over this one.

        :param key: the local key.
        :param entry: the entry; not stored if ``entry.size`` exceeds ``max_bytes`` (any
            older copy of the key is dropped all the same).
        :param since: from :meth:`begin`, called before the Redis write began, or ``None`` to
            store unconditionally. When given, the entry is not stored if ``entry.gkey``
            was invalidated (or L1 cleared) after it, and any copy of it is dropped:
            another writer, in this process or another, may have overwritten this value
            in Redis meanwhile, and the copy L1 holds may be the one Redis lost.
        :returns: whether the entry was stored.
        """
        ...

    def fill(self, key: Hashable, entry: Entry, since: int) -> bool:
        """Store a value read from Redis, unless it may have been invalidated meanwhile.

        :param key: the local key.
        :param entry: the entry.
        :param since: from :meth:`begin`, called before the Redis read began.
        :returns: whether the entry was stored.
        """
        ...

    def invalidate(self, gkey: str) -> None:
        """Drop the local copy of a Redis key, whatever local key holds it, and refuse
        fills of it that started earlier.

        :param gkey: the Redis key.
        """
        ...

    def pop(self, key: Hashable) -> None:
        """Drop the entry under a local key, if any.

        :param key: the local key.
        """
        ...

    def clear(self) -> None:
        """Drop every entry and refuse every fill that started earlier."""
        ...


class _Store(ABC):
    """The sequence, tombstones, reverse index and bounds shared by both backends."""

    peek: Callable[[Hashable], Entry | None]
    touch: Callable[[Hashable], None]
    entry_overhead: int

    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        max_tombstones: int,
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._enabled = max_items > 0 and max_bytes > 0
        self._max_tombstones = max_tombstones
        self._lock = threading.Lock()
        self._owner: dict[str, Hashable] = {}  # gkey -> the local key holding its copy
        # gkey -> seq of its last invalidation, oldest first; kept while reads need them.
        self._tombs: OrderedDict[str, int] = OrderedDict()
        self._readers: dict[int, int] = {}  # since -> how many reads in flight began there
        self._seq = 0
        self._floor = 0  # fills with since below this are refused (clear, pruned tombstones)
        self._evictions = 0

    # Storage, provided by each backend; called with the lock held.

    @abstractmethod
    def _get(self, key: Hashable) -> Entry | None:
        """Return the entry under ``key`` without counting a use."""

    @abstractmethod
    def _set(self, key: Hashable, entry: Entry) -> None:
        """Insert or replace ``key`` as the most recently used entry."""

    @abstractmethod
    def _pop(self, key: Hashable) -> Entry | None:
        """Remove and return the entry under ``key``."""

    @abstractmethod
    def _evict_lru(self) -> None:
        """Remove the least recently used entry and report it to ``_evicted``."""

    @abstractmethod
    def _wipe(self) -> None:
        """Remove every entry."""

    @abstractmethod
    def _entries(self) -> Iterable[tuple[Hashable, Entry]]:
        """List the entries held (for invariant checks)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """The bytes charged by the entries held now."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of entries held."""

    # The public operations.

    @property
    def seq(self) -> int:
        """The invalidation sequence number."""
        return self._seq

    @property
    def evictions(self) -> int:
        """How many entries were dropped to respect the bounds."""
        return self._evictions

    def begin(self) -> int:
        """Register a read in flight; see :meth:`L1Store.begin`."""
        with self._lock:
            since = self._seq
            self._readers[since] = self._readers.get(since, 0) + 1
            return since

    def reading(self) -> Reading:
        """:meth:`begin` and :meth:`end` as a context manager."""
        return Reading(self)

    def end(self, since: int) -> None:
        """Unregister a read; see :meth:`L1Store.end`."""
        with self._lock:
            left = self._readers.get(since, 0) - 1
            if left > 0:
                self._readers[since] = left
                return
            self._readers.pop(since, None)
            # Tombstones at or below the oldest read still in flight can refuse nothing.
            oldest = min(self._readers, default=self._seq)
            tombs = self._tombs
            while tombs and next(iter(tombs.values())) <= oldest:
                tombs.popitem(last=False)

    def put(self, key: Hashable, entry: Entry, since: int | None = None) -> bool:
        """Store a locally written value; see :meth:`L1Store.put`."""
        with self._lock:
            # Checked before our own tombstone, which is newer than any since.
            current = since is None or self._current(entry.gkey, since)
            self._tombstone(entry.gkey)
            if current:
                return self._store(key, entry)
            # Another local write raced this one: which of the two Redis kept is unknown
            # here, so neither copy may stay (the next read asks Redis).
            self._drop_copy(entry.gkey)
            return False

    def fill(self, key: Hashable, entry: Entry, since: int) -> bool:
        """Store a value read from Redis unless invalidated since; see :meth:`L1Store.fill`."""
        with self._lock:
            return self._current(entry.gkey, since) and self._store(key, entry)

    def invalidate(self, gkey: str) -> None:
        """Drop the local copy of ``gkey``; see :meth:`L1Store.invalidate`."""
        with self._lock:
            self._tombstone(gkey)
            self._drop_copy(gkey)

    def _drop_copy(self, gkey: str) -> None:
        key = self._owner.pop(gkey, None)
        if key is not None:
            self._pop(key)

    def pop(self, key: Hashable) -> None:
        """Drop the entry under a local key; see :meth:`L1Store.pop`."""
        with self._lock:
            self._remove(key)

    def clear(self) -> None:
        """Drop everything and refuse fills that started earlier; see :meth:`L1Store.clear`."""
        with self._lock:
            self._wipe()
            self._owner.clear()
            # The floor covers every tombstone: all of them are <= seq.
            self._tombs.clear()
            self._seq += 1
            self._floor = self._seq

    # Helpers; called with the lock held.

    def _current(self, gkey: str, since: int) -> bool:
        """Tell whether nothing invalidated ``gkey`` (or cleared L1) after ``since``."""
        if since < self._floor:
            return False
        tomb = self._tombs.get(gkey)
        return tomb is None or tomb <= since

    def _tombstone(self, gkey: str) -> None:
        """Record an invalidation of ``gkey``, for the reads in flight (none: no need)."""
        self._seq += 1
        if not self._readers:
            return
        tombs = self._tombs
        tombs[gkey] = self._seq
        tombs.move_to_end(gkey)
        if len(tombs) > self._max_tombstones:  # a backstop: refuse what they would judge
            _, self._floor = tombs.popitem(last=False)

    def _store(self, key: Hashable, entry: Entry) -> bool:
        """Insert ``entry`` under ``key``: one copy per gkey, then evict to the bounds."""
        if entry.size < 0:
            raise ValueError(f"entry size must not be negative, got {entry.size}")
        gkey = entry.gkey
        old = self._get(key)
        if old is not None and old.gkey != gkey:
            self._disown(old.gkey, key)
        other = self._owner.get(gkey)
        if other is not None and other != key:
            self._remove(other)
        if not self._enabled or entry.size > self.max_bytes:
            if old is not None:
                self._remove(key)
            return False
        # Replacing in place (rather than pop, then insert) means a concurrent lock-free
        # peek sees the old entry or the new one, never a spurious miss.
        self._set(key, entry)
        self._owner[gkey] = key
        while len(self) > self.max_items or self.nbytes > self.max_bytes:
            self._evict_lru()
        return True

    def _remove(self, key: Hashable) -> None:
        """Remove ``key`` and its reverse-index entry."""
        entry = self._pop(key)
        if entry is not None:
            self._disown(entry.gkey, key)

    def _disown(self, gkey: str, key: Hashable) -> None:
        """Forget that ``key`` holds ``gkey``, unless another key holds it now."""
        if self._owner.get(gkey) == key:
            del self._owner[gkey]

    def _evicted(self, key: Hashable, entry: Entry) -> None:
        """Account for an entry dropped to respect the bounds."""
        self._disown(entry.gkey, key)
        self._evictions += 1

    def _check_invariants(self) -> None:
        """Assert the bookkeeping is consistent (for tests)."""
        with self._lock:
            entries = list(self._entries())
            assert len(entries) == len(self) <= self.max_items
            assert sum(e.size for _, e in entries) == self.nbytes <= self.max_bytes
            assert self._owner == {e.gkey: k for k, e in entries}, "reverse index out of step"
            assert len(self._owner) == len(entries), "a gkey has two local copies"
            seqs = list(self._tombs.values())
            assert seqs == sorted(seqs), "tombstones out of order"
            assert all(self._floor < seq <= self._seq for seq in seqs)
            oldest = min(self._readers, default=self._seq)
            assert all(seq > oldest for seq in seqs), "a tombstone no read in flight needs"
            assert 0 <= self._floor <= self._seq
            if not self._enabled:
                assert not entries


@final
class _LruStore(_Store):
    """The hand-written LRU: lock-free reads through the OrderedDict's own C methods."""

    entry_overhead = 200  # an OrderedDict node and a reverse-index slot (tracemalloc)

    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        max_tombstones: int,
    ) -> None:
        super().__init__(max_items, max_bytes, max_tombstones)
        # Least recently used first. Never rebind _data: peek and touch are bound to it.
        self._data: OrderedDict[Hashable, Entry] = OrderedDict()
        self._nbytes = 0
        self.peek = self._data.get
        self.touch = self._data.move_to_end

    @property
    def nbytes(self) -> int:
        """The bytes charged by the entries held now."""
        return self._nbytes

    def __len__(self) -> int:
        """The number of entries held."""
        return len(self._data)

    def _get(self, key: Hashable) -> Entry | None:
        """Return the entry under ``key`` without counting a use."""
        return self._data.get(key)

    def _set(self, key: Hashable, entry: Entry) -> None:
        """Insert or replace ``key`` as the most recently used entry."""
        data = self._data
        old = data.get(key)
        data[key] = entry
        data.move_to_end(key)
        self._nbytes += entry.size - (0 if old is None else old.size)

    def _pop(self, key: Hashable) -> Entry | None:
        """Remove and return the entry under ``key``."""
        entry = self._data.pop(key, None)
        if entry is not None:
            self._nbytes -= entry.size
        return entry

    def _evict_lru(self) -> None:
        """Remove the least recently used entry."""
        key, entry = self._data.popitem(last=False)
        self._nbytes -= entry.size
        self._evicted(key, entry)

    def _wipe(self) -> None:
        """Remove every entry."""
        self._data.clear()  # in place, for the bound peek/touch
        self._nbytes = 0

    def _entries(self) -> list[tuple[Hashable, Entry]]:
        """List the entries held."""
        return list(self._data.items())


def make_l1(
    backend: str,
    *,
    max_items: int,
    max_bytes: int,
    max_tombstones: int = 100_000,
) -> L1Store:
    """Build an L1 store.

    :param backend: ``"lru"`` (hand-written, lock-free hits) or ``"cachetools"``.
    :param max_items: the most entries held; ``0`` disables L1.
    :param max_bytes: the most bytes charged (the sum of ``Entry.size``); ``0`` disables L1.
    :param max_tombstones: the most invalidations remembered at once for reads in
        flight; beyond it the oldest are forgotten, and fills that began before them are
        refused.
    :returns: the store.
    :raises ConfigurationError: unknown backend (``TIERED_CACHE_L1_BACKEND``) or a
        negative bound (``TIERED_CACHE_L1_MAX_ITEMS``, ``TIERED_CACHE_L1_MAX_BYTES``).
    :raises ValueError: a negative ``max_tombstones``.
    """
    if max_items < 0:
        raise ConfigurationError("TIERED_CACHE_L1_MAX_ITEMS", max_items, "must not be negative")
    if max_bytes < 0:
        raise ConfigurationError("TIERED_CACHE_L1_MAX_BYTES", max_bytes, "must not be negative")
    if max_tombstones < 0:
        raise ValueError(f"max_tombstones={max_tombstones!r} must not be negative")
    store: type[_Store]
    if backend == "lru":
        store = _LruStore
    elif backend == "cachetools":
        from .l1_cachetools import CachetoolsStore  # it imports this module

        store = CachetoolsStore
    else:
        raise ConfigurationError(
            "TIERED_CACHE_L1_BACKEND", backend, "expected 'lru' or 'cachetools'"
        )
    return store(max_items, max_bytes, max_tombstones)
