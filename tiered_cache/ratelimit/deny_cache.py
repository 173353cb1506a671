"""The local deny cache: clients over a limit are refused from memory until they may retry.

A refusal from Redis comes with the time until the same request could be admitted. Until
then no request of that client for the same limits, and at least the same cost, can be
admitted, whatever other workers do (they can only spend more), so this worker refuses it
without asking Redis: a flood from one client costs Redis one command per worker per
reset, not one per request. A cheaper request goes to Redis, since it may fit sooner.
A costlier one gets the held refusal's ``Retry-After``, which for it is a lower bound: if
it comes back then and still does not fit, Redis refuses it with its own. (Holding a
refusal per cost would give each its exact time, but let a client whose cost it chooses
spend one Redis command per cost and fill the cache with its entries.)

The one thing that can make a client admissible early is an admin's
:meth:`~tiered_cache.ratelimit.RateLimiter.reset`. It drops the covered entries here and,
over the invalidation bus, in every other process. A check that was in flight during a
reset must not put its older refusal back: :attr:`DenyCache.epoch` counts removals, and
:meth:`DenyCache.put` ignores a refusal from a check that began before the last one (as
L1 ignores a fill that raced an invalidation).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable

from .decision import Decision


@dataclasses.dataclass(frozen=True, slots=True)
class Denial:
    """A refusal held in memory: until ``until`` (monotonic), for costs >= ``cost``."""

    until: float
    cost: int
    decision: Decision
    refused_at: float


class DenyCache:
    """Refusals by key, each until its own deadline; bounded, thread-safe, fork-aware.

    Lookups take no lock (one ``dict.get``); inserts and removals do. When full, expired
    entries go first, then the oldest inserted.

    :param max_items: how many refused clients are held at most.
    :param timer: the monotonic clock (injectable for tests).
    """

    def __init__(
        self, max_items: int = 10_000, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_items = max_items
        self._timer = timer
        self._entries: dict[Hashable, Denial] = {}
        self._lock = threading.Lock()
        self.epoch = 0
        """Bumped by every :meth:`discard` and :meth:`clear`: read it before a check."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, cost: int) -> Denial | None:
        """The denial that refuses a request of ``cost`` for ``key`` now, if any."""
        denial = self._entries.get(key)
        if denial is None:
            return None
        if self._timer() >= denial.until:
            with self._lock:
                if self._entries.get(key) is denial:
                    del self._entries[key]
            return None
        return denial if cost >= denial.cost else None

    def put(
        self, key: Hashable, retry_after: float, cost: int, decision: Decision, *, since: int
    ) -> None:
        """Refuse requests of ``cost`` or more for ``key`` during ``retry_after`` seconds.

        :param since: :attr:`epoch` as read before the check that refused: a refusal
            older than the last removal (a reset) is not held.
        """
        if self.max_items <= 0 or retry_after <= 0:
            return
        now = self._timer()
        denial = Denial(now + retry_after, cost, decision, now)
        with self._lock:
            if since != self.epoch:
                return
            self._entries.pop(key, None)  # re-inserted last: the newest is evicted last
            if len(self._entries) >= self.max_items:
                self._make_room(now)
            self._entries[key] = denial

    def _make_room(self, now: float) -> None:
        for key in [k for k, d in self._entries.items() if now >= d.until]:
            del self._entries[key]
        while len(self._entries) >= self.max_items:
            del self._entries[next(iter(self._entries))]

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop the entries whose key satisfies ``predicate``; return how many."""
        with self._lock:
            self.epoch += 1
            keys = [key for key in self._entries if predicate(key)]
            for key in keys:
                del self._entries[key]
        return len(keys)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self.epoch += 1
            self._entries.clear()

    def after_fork(self) -> None:
        """Start empty with a new lock: a forked child holds none of its parent's denials
        (and another thread may have held the lock at the fork)."""
        self._lock = threading.Lock()
        self._entries = {}
