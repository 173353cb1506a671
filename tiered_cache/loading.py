"""``get_or_set``: read through both tiers, else load once for the whole cluster.

The path of one call, after an L1 miss:

1. In-process single-flight (:class:`~tiered_cache.flight.Flights`): one leader thread
   per key; followers wait for its outcome, value or exception.
2. The leader reads Redis. A fresh value is filled into L1 (its L1 life shortened by an
   XFetch draw when ``early_refresh``; a draw that falls due refreshes in the background
   now). A value past ``timeout`` but within ``stale_ttl`` is served while one background
   refresh runs cluster-wide.
3. On a miss: ``SET lock NX PX`` pipelined with a second ``GET`` (the value may have
   landed since step 2). The lock holder loads, then writes, announces and releases in
   one pipeline; on a loader error it releases and announces the abort. The others sleep
   until the bus announces the key, read it, and take over if the loader failed (with
   no bus connected, they read again every :data:`POLL_WITHOUT_BUS`). After
   ``lock_timeout`` a waiter loads by itself.

An uncontended miss is three round trips: read, lock+read, write+publish+release.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import random
import threading
import uuid
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Final

from ._durations import checked_seconds
from .copying import copier_for
from .flight import Flights, Waiters, release
from .framing import Frame
from .keys import KeyLayout
from .redis_tier import UNAVAILABLE, Client, without_outages
from .sentinels import MISS, Miss
from .stored import expired

if TYPE_CHECKING:
    from .cache import Cache

XFETCH_BETA: Final = 1.0
POLL_WITHOUT_BUS: Final = 0.05
"""Seconds a waiter sleeps between reads of Redis while no bus can wake it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    """One ``get_or_set`` request: where the value lives and how to make it."""

    local: Hashable
    gkey: str
    loader: Callable[[], Any]
    timeout: float | None
    stale_ttl: float = 0.0
    lock_timeout: float = 10.0
    early_refresh: bool = True
    keep: bool = True
    """False when keyed by a namespace version that is a guess (Redis could not give
    it, or the bus could not vouch for it): load, and store nothing under it."""

    @property
    def lock_key(self) -> str:
        """The Redis key of this value's single-flight lock."""
        return KeyLayout.flight_lock(self.gkey)

    @property
    def lock_ms(self) -> int:
        """The lock's lifetime in milliseconds."""
        return max(math.ceil(self.lock_timeout * 1000), 1)


class Loading:
    """The single-flight machinery of one cache in one process (made anew after a fork)."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self.flights = Flights()
        self.waiters = Waiters()
        self._refresh_lock = threading.Lock()
        self._refreshing: set[str] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    def get_or_set(self, load: Load) -> Any:
        """Return the value of ``load.gkey``; L1 was already missed.

        :raises ValueError: for a ``timeout``, ``stale_ttl`` or ``lock_timeout`` that is
            not a number of seconds within bounds (checked here, on the way to Redis, not
            on hits, and before the loader runs for nothing).
        """
        if load.timeout is not None:
            checked_seconds("timeout", load.timeout)
        checked_seconds("stale_ttl", load.stale_ttl)
        checked_seconds("lock_timeout", load.lock_timeout)
        flight, leader = self.flights.join(load.gkey)
        if not leader:
            self._cache.stampede_waits += 1
            # The leader may wait lock_timeout for another process, then load itself.
            if flight.done.wait(2 * load.lock_timeout):
                if flight.error is not None:
                    raise flight.error
                return private(flight.value)
            return self._run(load.loader)[0]
        try:
            value = self._lead(load)
        except BaseException as exc:
            self.flights.land(load.gkey, flight, error=exc)
            raise
        if self.flights.land(load.gkey, flight, value=value):
            # The followers copy ``value`` after this returns: the leader's caller gets a
            # copy of its own, or what it did to its result would reach theirs.
            return private(value)
        return value

    def _lead(self, load: Load) -> Any:
        """This process's one caller for the key: Redis, then the cross-process flight."""
        cache = self._cache
        value = self._read(load)
        if value is UNAVAILABLE or (value is MISS and not load.keep):
            cache.misses += 1
            return self._run(load.loader)[0]
        if value is not MISS:
            return value
        cache.misses += 1
        return self._load_once(load)

    def _read(self, load: Load) -> Any:
        """The value in Redis if it may be served (fresh, or stale within ``stale_ttl``)."""
        cache = self._cache
        with cache._reading() as since:
            raw = cache._get(load.gkey)
            if raw is UNAVAILABLE:
                return raw
            decoded = cache._values.decode(load.gkey, raw)
            if decoded is MISS:
                return MISS
            frame, value = decoded
            now = cache._clock()
            if not frame.fresh_until or now < frame.fresh_until:
                cache.l2_hits += 1
                # A value that never goes stale (fresh_until 0) is never refreshed early.
                due = load.keep and load.early_refresh and frame.delta and frame.fresh_until
                early = xfetch_gap(frame.delta) if due else 0.0
                if early and now + early >= frame.fresh_until:
                    cache.early_refreshes += 1
                    self.refresh_later(load, frame.fresh_until)
                return cache._fill(load.local, load.gkey, frame, value, since, early=early)
            if load.stale_ttl and now < frame.fresh_until + load.stale_ttl:
                cache.stale_served += 1
                self.refresh_later(load, frame.fresh_until)
                return value
            return MISS

    def _load_once(self, load: Load) -> Any:
        """Take the cluster-wide lock and load, or wait for the process that holds it."""
        cache = self._cache
        deadline = cache._timer() + load.lock_timeout
        woken = self.waiters.register(load.gkey)
        try:
            while True:
                token = uuid.uuid4().hex.encode()
                with cache._reading() as since:
                    result = cache._tier.run("lock", _lock_and_read(load, token))
                    if result is UNAVAILABLE:
                        break
                    locked, raw = result
                    found = self._fresh(load.gkey, raw)
                    if found is not MISS:
                        if locked:
                            cache._tier.run("unlock", _release(load, token))
                        return self._found(load, found, since)
                if locked:
                    return self._load_and_store(load, token)
                if not self._wait(woken, deadline):
                    # The holder did not finish within lock_timeout: load without the lock.
                    return self._load_and_store(load, None)
                with cache._reading() as since:
                    found = self._fresh(load.gkey, cache._get(load.gkey))
                    if found is not MISS:
                        return self._found(load, found, since)
        finally:
            self.waiters.unregister(load.gkey, woken)
        return self._run(load.loader)[0]  # Redis is unavailable: fail open

    def _found(self, load: Load, found: tuple[Frame, Any], since: int) -> Any:
        """Another process's value: fill L1 and hand out a private copy."""
        return self._cache._fill(load.local, load.gkey, found[0], found[1], since)

    def _wait(self, woken: threading.Event, deadline: float) -> bool:
        """Sleep until the bus announces the key; False when the deadline has passed.

        Without a connected bus (invalidation off, or Redis just lost) no announcement
        comes: sleep :data:`POLL_WITHOUT_BUS` at most, and the caller reads Redis again.
        """
        remaining = deadline - self._cache._timer()
        if remaining <= 0:
            return False
        self._cache.stampede_waits += 1
        if not self._cache._bus.connected:
            remaining = min(remaining, POLL_WITHOUT_BUS)
        woken.wait(remaining)
        woken.clear()
        return True

    def _fresh(self, gkey: str, raw: Any) -> tuple[Frame, Any] | Miss:
        """Decode ``raw`` when it is a fresh value, else MISS."""
        decoded = self._cache._values.decode(gkey, raw)
        if decoded is MISS or expired(decoded[0], self._cache._clock()):
            return MISS
        return decoded

    def _run(self, loader: Callable[[], Any]) -> tuple[Any, float]:
        """Run the loader; return its value and how long it took."""
        self._cache.loader_calls += 1
        started = self._cache._timer()
        value = loader()
        return value, self._cache._timer() - started

    def _load_and_store(self, load: Load, token: bytes | None) -> Any:
        """Load, then store, announce and release in one trip; on error release and tell
        (a value that cannot be stored, say one the serializer refuses, included)."""
        try:
            value, delta = self._run(load.loader)
            stored = self._cache._store(
                load.local,
                load.gkey,
                value,
                load.timeout,
                delta=delta,
                stale_ttl=load.stale_ttl,
                unlock=(load.lock_key, token) if token is not None else None,
                # The loader's own L1 copy takes an XFetch draw too, or this process would
                # only ever look at the value again after it expired.
                early=xfetch_gap(delta) if load.early_refresh and delta else 0.0,
            )
            if not stored and token is not None:
                # The write (and the release riding with it) failed: if Redis is back
                # already, the waiting processes hear now, not when the lock expires.
                self._abort(load, token)
        except BaseException:
            if token is not None:
                self._abort(load, token)  # a no-op for a lock the store already released
            raise
        return value

    def _abort(self, load: Load, token: bytes) -> None:
        """Release the lock after a failed load and wake the waiting processes."""
        self._cache._write(
            "unlock", lambda pipe: None, unlock=(load.lock_key, token), aborted=(load.gkey,)
        )

    def refresh_later(self, load: Load, seen: float) -> None:
        """Refresh in a background thread unless this process is already refreshing it.

        :param seen: ``fresh_until`` of the value found stale (or due): if Redis holds
            another by the time the refresh runs, someone refreshed it already.
        """
        if not load.keep:  # a guessed version: nothing is stored under it
            return
        with self._refresh_lock:
            if self._closed or load.gkey in self._refreshing:
                return
            self._refreshing.add(load.gkey)
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=2, thread_name_prefix="tiered_cache-refresh"
                )
            executor = self._executor
        try:
            executor.submit(self._refresh, load, seen)
        except RuntimeError:  # closed, or the interpreter is exiting: the reader still
            with self._refresh_lock:  # gets its stale value, and a later one may refresh
                self._refreshing.discard(load.gkey)

    def _refresh(self, load: Load, seen: float) -> None:
        """One background refresh, if this process wins the lock and it is still due."""
        cache = self._cache
        try:
            token = uuid.uuid4().hex.encode()
            result = cache._tier.run("lock", _lock_and_read(load, token))
            if result is UNAVAILABLE or not result[0]:
                return  # another worker is refreshing it, or Redis is away
            decoded = cache._values.decode(load.gkey, result[1])
            if decoded is not MISS and decoded[0].fresh_until != seen:
                cache._tier.run("unlock", _release(load, token))  # refreshed meanwhile
                return
            self._load_and_store(load, token)
        except Exception as exc:  # a background thread: log, count, carry on
            cache._log.warning("refresh", "background refresh of %s failed: %r", load.gkey, exc)
        finally:
            with self._refresh_lock:
                self._refreshing.discard(load.gkey)

    def close(self) -> None:
        """Stop background refreshes that have not started, and start no more."""
        with self._refresh_lock:
            self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _lock_and_read(load: Load, token: bytes) -> Callable[[Client], list[Any]]:
    """``SET lock NX PX`` and ``GET`` in one pipeline."""

    def call(client: Client) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        pipe.set(load.lock_key, token, nx=True, px=load.lock_ms)
        pipe.get(load.gkey)
        # A GET of a key that is not a string replies with an error: a miss, decoded later.
        return without_outages(pipe.execute(raise_on_error=False))

    return call


def _release(load: Load, token: bytes) -> Callable[[Client], Any]:
    """Release a lock we took but did not need."""
    return lambda client: release(client, load.lock_key, token)


def private(value: Any) -> Any:
    """A copy of a freshly decoded value that L1 may also hold."""
    copy = copier_for(value)
    return value if copy is None else copy(value)


def xfetch_gap(delta: float) -> float:
    """How long before expiry to recompute: XFetch's ``-delta * beta * ln(U)``, U in (0, 1]."""
    return -delta * XFETCH_BETA * math.log(1.0 - random.random())
