"""Namespace versions: the counter in every namespaced key, cached in this process.

A namespace's version lives in Redis (``INCR`` on invalidation), starting from the time
in microseconds (:func:`fresh_start`) so that a counter evicted or lost never repeats.
This process keeps the versions it has used, kept current by the bus; a version fetched
while the bus cannot vouch for it is trusted for ``disconnected_ttl`` seconds only, like
an L1 entry. A version never goes backwards here: a bump heard on the bus wins over a
fetch that was already on its way.

A fetch waits for the bus to catch up with it (:meth:`~tiered_cache.bus.Bus.barrier`):
a version newer than the messages this process has heard would key what is built now
from L1 copies those messages drop. A fetch the bus cannot vouch for within
``wait`` seconds is a guess, not kept.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import redis

from .bus import Barrier
from .keys import KeyLayout
from .redis_tier import UNAVAILABLE, Client, RedisTier, without_outages


def fresh_start() -> int:
    """A first version no earlier counter of this name can have reached: the time in µs.

    A counter starts here rather than at 0 because Redis may evict it (any ``allkeys-*``
    policy) or lose it (a restart without persistence); starting again from 0 would bring
    back values still stored under the old low versions. Bumps would have to outpace one
    per microsecond, for as long as the counter lived, to catch up with a later start.
    """
    return time.time_ns() // 1000


JUNK_FROM: Final = 2**62
"""A counter at or past this holds foreign bytes: :func:`fresh_start` counters, bumped
once a microsecond, would take 140,000 years to reach it. Read as version 0 (junk), so
that its replacement by a fresh start (``lua/counter_restart.lua``, when INCR would
overflow) moves every reader's version up, as versions only ever move."""


def counter_version(raw: object) -> int:
    """The version a counter's GET reply stands for: 0 when absent or not a counter of
    ours (foreign bytes, a number no counter of ours reaches), as if it had just started."""
    if not isinstance(raw, bytes):
        return 0
    try:
        version = int(raw)
    except ValueError:
        return 0
    return version if version < JUNK_FROM else 0


def start_counter(pipe: Any, counter: str) -> None:
    """Queue the start of a version counter at :func:`fresh_start`, unless it exists:
    before every read or bump of one, since Redis may have evicted it (a bare INCR
    would restart it at 1, below the versions processes hold, and hand them out again)."""
    pipe.set(counter, fresh_start(), nx=True)


def read_counter(
    client: Client, counter: str, barrier: Barrier | None = None
) -> bytes | redis.ResponseError | None:
    """GET a version counter, starting it at :func:`fresh_start` when it does not exist;
    ``barrier``'s mark is published right after the read that answers.

    A counter that holds another type answers with an error reply, returned (a version
    0, for :func:`counter_version`) and not raised.
    """

    def start(pipe: Any) -> None:
        start_counter(pipe, counter)
        pipe.get(counter)

    raw = _then_mark(client, barrier, lambda pipe: pipe.get(counter))[0]
    if raw is None:
        raw = _then_mark(client, barrier, start)[1]
    return raw  # type: ignore[no-any-return]


def _then_mark(client: Client, barrier: Barrier | None, queue: Callable[[Any], object]) -> Any:
    """Run what ``queue`` puts on a pipeline, then publish ``barrier``'s mark: in the
    same round trip, but on a Cluster, whose pipelines refuse PUBLISH."""
    cluster = hasattr(client, "mget_nonatomic")
    pipe = client.pipeline(transaction=False)
    queue(pipe)
    if barrier is not None and not cluster:
        barrier.publish(pipe)
    results = without_outages(pipe.execute(raise_on_error=False))
    if barrier is not None and cluster:
        barrier.publish(client)
    return results


_FORGET_BUCKETS: Final = 1024


class NamespaceVersions:
    """The versions of the namespaces this process uses."""

    def __init__(
        self,
        tier: RedisTier,
        layout: KeyLayout,
        *,
        disconnected_ttl: float,
        bus_fresh_until: Callable[[], float],
        barrier: Callable[[], contextlib.AbstractContextManager[Barrier | None]],
        wait: float,
        timer: Callable[[], float],
        current: dict[str, int],
    ) -> None:
        self._tier = tier
        self._layout = layout
        self._ttl = disconnected_ttl
        self._bus_fresh_until = bus_fresh_until
        self._barrier = barrier
        self._wait = wait
        self._timer = timer
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, float]] = {}
        # What a fetch or a bump in flight checks before it records: a forget of its
        # name (by name: with the barrier's wait inside that window, a bump of any other
        # name heard meanwhile would void it for nothing), or a flush. Forgets are
        # counted in a fixed number of buckets, by the name's hash: every bus message's
        # names are forgotten, used here or not, and counts by name would grow without
        # bound; two names in one bucket only void a read for nothing, now and then.
        self._cleared = 0
        self._forgotten = [0] * _FORGET_BUCKETS
        self.guesses = 0
        """Versions handed out as guesses (see :meth:`get_or_guess`), for the figures."""
        # The last known versions without their age, for L1 hit paths: an L1 entry found
        # under an outdated version is still bounded by the entry's own age checks.
        # It belongs to the cache, which keeps the same dict across forks for its memoizers.
        self.current = current
        current.clear()

    def cached(self, name: str) -> int | None:
        """Return the version of ``name`` if the process may trust its copy now."""
        known = self._known.get(name)
        if known is None:
            return None
        now = self._timer()
        if now < self._bus_fresh_until() or known[1] > now - self._ttl:
            return known[0]
        return None

    def get(self, name: str) -> int:
        """Return the current version of ``name``; see :meth:`get_or_guess`."""
        return self.get_or_guess(name)[0]

    def get_or_guess(self, name: str) -> tuple[int, bool]:
        """Return the current version of ``name``, fetching it when not trusted, and
        whether it is a guess (Redis could not give it).

        With Redis unavailable the last known version (or 0) keys L1 and is not
        recorded, and this thread's cache calls fail at once for a moment
        (:meth:`RedisTier.hold_off`): keyed by a version guessed here, a read could
        find, and a write leave, a value that no invalidation of the namespace reaches.
        A caller that may write later than that moment checks the flag itself.

        A fetched version the bus has not caught up with within ``wait`` seconds (its
        listener starved or stalled) is a guess too, and not recorded; no hold-off.
        """
        version = self.cached(name)
        if version is not None:
            return version, False
        epoch = self.epoch(name)
        fetched_at = self._timer()
        counter = self._layout.counter(name)
        with self._barrier() as barrier:
            raw = self._tier.run(
                "namespace version", lambda client: read_counter(client, counter, barrier)
            )
            if raw is UNAVAILABLE:
                self._tier.hold_off()
                self.guesses += 1
                known = self._known.get(name)
                return (known[0] if known else 0), True
            if barrier is not None and not barrier.passed(self._wait):
                self.guesses += 1
                return counter_version(raw), True
        return self._record(name, counter_version(raw), fetched_at, epoch), False

    def forget(self, name: str) -> None:
        """Drop the version of ``name`` (another process bumped it); fetches in flight lose."""
        with self._lock:
            self._drop(name)

    def _drop(self, name: str) -> None:
        """:meth:`forget`, with the lock held."""
        self._known.pop(name, None)
        self.current.pop(name, None)
        self._forgotten[hash(name) % _FORGET_BUCKETS] += 1

    def epoch(self, name: str) -> tuple[int, int]:
        """Moves on every :meth:`forget` of ``name`` and every :meth:`clear`: read it
        before a fetch or a bump, and pass it to :meth:`heard`."""
        return self._cleared, self._forgotten[hash(name) % _FORGET_BUCKETS]

    def heard(self, name: str, version: int, epoch: tuple[int, int]) -> None:
        """Record a version this process set itself, unless a forget of ``name`` or a
        flush came after ``epoch`` (read before the bump was sent): then another process
        may have bumped it past ours, and the next read fetches it. Then the name is
        forgotten as a bump heard on the bus forgets it (and a fetch of it in flight,
        begun before our INCR, loses too)."""
        with self._lock:
            if self.epoch(name) != epoch:
                self._drop(name)
                return
            known = self._known.get(name)
            if known is None or known[0] <= version:
                self._known[name] = (version, self._timer())
                self.current[name] = version

    def _record(self, name: str, version: int, fetched_at: float, epoch: tuple[int, int]) -> int:
        """Keep a fetched version unless a forget of it, a flush or a newer version got
        there first."""
        with self._lock:
            known = self._known.get(name)
            if self.epoch(name) != epoch:
                return version
            if known is not None and known[0] > version:
                return known[0]
            self._known[name] = (version, fetched_at)
            self.current[name] = version
            return version

    def clear(self) -> None:
        """Forget every version (bus reconnect, clear, fork)."""
        with self._lock:
            self._known.clear()
            self.current.clear()
            self._cleared += 1
