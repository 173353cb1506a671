"""The ``"cachetools"`` backend of L1: the contract of :class:`~tiered_cache.l1.L1Store`
over :class:`cachetools.LRUCache`.

cachetools is not thread-safe, so unlike the hand-written ``"lru"`` backend every access,
``peek`` and ``touch`` included, takes the store's lock. The byte budget is cachetools'
own ``maxsize`` (entries weigh their ``Entry.size``); the item bound is enforced on top,
by the shared base class, as are the sequence, tombstones and reverse index.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import final

import cachetools

from .l1 import Entry, _Store

__all__ = ["CachetoolsStore"]


def _entry_size(entry: Entry) -> int:
    """Weigh an entry for cachetools' byte bound."""
    return entry.size


class _EvictionReportingLRU(cachetools.LRUCache[Hashable, Entry]):
    """cachetools' LRU, reporting the entries it drops to make room (its documented hook)."""

    def __init__(self, max_bytes: int, on_evict: Callable[[Hashable, Entry], None]) -> None:
        super().__init__(max_bytes, getsizeof=_entry_size)
        self._on_evict = on_evict

    def popitem(self) -> tuple[Hashable, Entry]:
        """Remove the least recently used entry and report it."""
        key, entry = super().popitem()
        self._on_evict(key, entry)
        return key, entry


@final
class CachetoolsStore(_Store):
    """The same contract over cachetools.LRUCache; every access takes the lock."""

    entry_overhead = 320  # cachetools' data, size and order dicts, a reverse-index slot

    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        max_tombstones: int,
    ) -> None:
        super().__init__(max_items, max_bytes, max_tombstones)
        # The byte budget is cachetools' own maxsize; the item bound is enforced on top.
        self._cache = _EvictionReportingLRU(max_bytes, self._evicted)
        self.peek = self._locked_peek
        self.touch = self._locked_touch

    @property
    def nbytes(self) -> int:
        """The bytes charged by the entries held now."""
        return int(self._cache.currsize)

    def __len__(self) -> int:
        """The number of entries held."""
        return len(self._cache)

    def _locked_peek(self, key: Hashable) -> Entry | None:
        """Return the entry under ``key``, taking the lock (cachetools is not thread-safe)."""
        with self._lock:
            return self._get(key)

    def _locked_touch(self, key: Hashable) -> None:
        """Mark ``key`` recently used, taking the lock; KeyError if it is gone."""
        with self._lock:
            self._cache[key]  # LRUCache.__getitem__ moves the key to the recent end

    def _get(self, key: Hashable) -> Entry | None:
        """Return the entry under ``key`` without counting a use."""
        # The base class lookup: LRUCache's own would reorder, and a peek is not a use.
        try:
            return cachetools.Cache.__getitem__(self._cache, key)
        except KeyError:
            return None

    def _set(self, key: Hashable, entry: Entry) -> None:
        """Insert or replace ``key`` as the most recently used entry."""
        # Remove the old version first, or cachetools may count it as an eviction while
        # making room for its replacement. Readers take the lock, so none sees the gap.
        if key in self._cache:
            del self._cache[key]
        self._cache[key] = entry  # may evict through popitem, which reports to _evicted

    def _pop(self, key: Hashable) -> Entry | None:
        """Remove and return the entry under ``key``."""
        entry = self._get(key)
        if entry is not None:
            del self._cache[key]
        return entry

    def _evict_lru(self) -> None:
        """Remove the least recently used entry."""
        self._cache.popitem()  # reports to _evicted

    def _wipe(self) -> None:
        """Remove every entry."""
        self._cache.clear()

    def _entries(self) -> list[tuple[Hashable, Entry]]:
        """List the entries held."""
        return [(key, cachetools.Cache.__getitem__(self._cache, key)) for key in self._cache]
