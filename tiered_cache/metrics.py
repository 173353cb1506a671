"""Figures of every worker on every host: the stats publisher, the reader, Prometheus.

Each worker process publishes its :meth:`Cache.stats` to Redis every few seconds under
``{prefix}:{version}:#stats:{host}:{pid}:{id}`` with a TTL of three periods, so a worker
that dies drops out of the figures on its own. ``id`` tells apart two caches of one
process (two apps, or a test's simulated workers), which would otherwise overwrite each
other's figures. The keys are listed in the set ``#stats:index``, so readers (the CLI,
``/_tiered_cache/stats`` and ``/metrics``) find them with SMEMBERS + MGET, never a SCAN
of the whole keyspace; a reader drops from the set the keys that expired.

The publisher is a supervised daemon thread started lazily, on the first request a
worker serves: never in a gunicorn master before it forks (a thread does not survive a
fork, and the master is no worker), never in a CLI process. A forked child starts its own
on its first request. Publishing fails open: errors are counted and logged (rate-limited).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import redis

from ._forks import registered, renew_after_fork
from ._log import RateLimitedLog
from .errors import TieredCacheError
from .redis_tier import UNAVAILABLE, RedisTier

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .cache import Cache

STATS_PERIOD: Final = 5.0
"""Seconds between two publications of one worker's figures."""

# Figures that only grow (Prometheus counters) and those that go up and down (gauges).
COUNTERS: Final = {
    "l1_hits": "Reads answered by this worker's L1 (a cached page: once a request).",
    "l2_hits": "Reads answered by Redis (a cached page: once a request).",
    "misses": "Reads that found nothing (a cached page: a request that ran its view).",
    "l1_evictions": "L1 entries evicted to respect its bounds.",
    "invalidations_received": "Bus messages from other workers.",
    "bus_reconnects": "Re-subscriptions of the invalidation bus.",
    "breaker_opened": "Times the circuit breaker opened.",
    "redis_errors": "Redis calls that failed (errors and timeouts).",
    "decode_errors": "Stored values that did not decode (treated as misses).",
    "loader_calls": "Loader calls of get_or_set and memoized functions.",
    "stampede_waits": "Callers that waited for another's loader.",
    "stale_served": "Stale values served while one refresh ran.",
    "early_refreshes": "Refreshes started early (XFetch).",
    "version_guesses": (
        "Namespace versions Redis could not give or the bus could not vouch for "
        "(nothing is stored under them)."
    ),
    "ratelimit_refusals": "Requests refused by a rate limit.",
    "publish_errors": "Failed publications of these figures.",
}
GAUGES: Final = {
    "hit_ratio": "(L1 + L2 hits) / reads since the worker started.",
    "l1_items": "Entries in this worker's L1.",
    "l1_bytes": "Approximate bytes held by this worker's L1.",
    "bus_connected": "1 while the invalidation bus is subscribed.",
    "breaker_open": "1 while the circuit breaker refuses Redis calls.",
}
LABELS: Final = ("host", "pid", "app", "id")
"""``id`` too: containers that share a host name (``network_mode: host``) each number
their processes from 1, so host and pid alone can name two workers."""


def tier_of(cache: Cache) -> RedisTier:
    """The cache's Redis error boundary; the figures use the cache's client and breaker."""
    return cache.redis


def is_closed(cache: Cache) -> bool:
    """Tell whether :meth:`Cache.close` ran."""
    return cache.closed


class StatsPublisher:
    """Publishes one cache's figures from its worker process.

    :param cache: the cache whose :meth:`~tiered_cache.Cache.stats` are published.
    :param app: the app's name, shown with the figures.
    :param period: seconds between publications; the key lives three periods.
    :param clock: wall clock (published times are epoch seconds, comparable across hosts).
    """

    def __init__(
        self,
        cache: Cache,
        *,
        app: str,
        period: float = STATS_PERIOD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = weakref.ref(cache)  # an app dropped without close() is not kept alive
        self.app = app
        self.period = period
        self._clock = clock
        self._log = RateLimitedLog()
        self.host = socket.gethostname()
        self.errors = 0
        self._stopped = False
        self._reset()
        # A forked child must not believe it runs its parent's thread (threads do not
        # survive a fork) nor take a lock another thread held at the fork.
        renew_after_fork(self, StatsPublisher._reset)

    def _reset(self) -> None:
        """Forget this process's thread (again, in a forked child)."""
        self._lock = threading.Lock()
        self._publishing = threading.Lock()  # one record built and SET at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.id = uuid.uuid4().hex[:8]
        self.started = self._clock()
        self.errors = 0
        self._log.after_fork()

    @property
    def key(self) -> str:
        """This worker's stats key."""
        return stats_prefix(self._cache_or_raise()) + f"{self.host}:{os.getpid()}:{self.id}"

    @property
    def running(self) -> bool:
        """True while this process's publishing thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def ensure_started(self) -> None:
        """Start publishing from this process unless it already does (cheap when it does)."""
        if self._pid == os.getpid() or self._stopped:
            return
        with self._lock:
            cache = self._cache()
            if self._pid == os.getpid() or self._stopped or cache is None or is_closed(cache):
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="tiered_cache-stats", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0, *, unpublish: bool = True) -> None:
        """Stop publishing for good and, by default, remove this worker's figures from
        Redis. For good: a publisher stopped (at a worker's exit) never starts again,
        in this process or in a child it forks."""
        with self._lock:  # a concurrent ensure_started either ran first or sees this
            self._stopped = True
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        cache = self._cache()
        if unpublish and self._pid == os.getpid() and cache is not None and not is_closed(cache):
            key, index = self.key, cache.layout.stats_index

            def unpublish_(client: Any) -> None:
                pipe = client.pipeline(transaction=False)
                pipe.delete(key)
                pipe.srem(index, key)
                pipe.execute()

            self._guarded(cache, "unpublish", unpublish_)
        self._thread = None
        self._pid = None

    def _run(self, stop: threading.Event) -> None:
        """Publish now and then every period until stopped or the cache is closed."""
        while not stop.is_set():
            cache = self._cache()
            if cache is None or is_closed(cache):
                return
            self.publish(cache)
            del cache  # hold no reference while sleeping
            stop.wait(self.period)

    def record(self, cache: Cache) -> dict[str, Any]:
        """This worker's figures as published: who, when, and :meth:`Cache.stats`."""
        stats = cache.stats()
        stats["publish_errors"] = self.errors
        config = cache.config
        return {
            "host": self.host,
            "pid": os.getpid(),
            "id": self.id,
            "app": self.app,
            "prefix": config.prefix,
            "version": config.version,
            "started": self.started,
            "published": self._clock(),
            "stats": stats,
        }

    def publish(self, cache: Cache | None = None) -> bool:
        """Publish the figures once; failures are counted and logged, never raised.

        :returns: whether Redis took them.
        """
        cache = cache or self._cache()
        return cache is not None and self.published(cache) is not None

    def published(self, cache: Cache) -> dict[str, Any] | None:
        """Publish the figures once and return the very record Redis now holds, or None
        when it took none.

        Built and written under one lock: a record built earlier (by the publishing
        thread) never lands after a later one (a request's), which would take this
        worker's counters back in Redis.
        """
        with self._publishing:
            record = self.record(cache)
            try:
                data = json.dumps(record, separators=(",", ":"))
            except Exception as exc:  # supervised: a bad figure must not end the thread
                self._failed("stats", exc)
                return None
            return record if self._write(cache, data) else None

    def _write(self, cache: Cache, data: str) -> bool:
        key, index, ttl_ms = self.key, cache.layout.stats_index, int(self.period * 3000)

        def publish(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, data, px=ttl_ms)
            pipe.sadd(index, key)
            pipe.pexpire(index, ttl_ms)  # the set outlives its last worker by a TTL, no more
            pipe.execute()

        return self._guarded(cache, "publish", publish)

    def _guarded(self, cache: Cache, what: str, call: Callable[[Any], Any]) -> bool:
        try:
            result = tier_of(cache).run(f"stats {what}", call)
        except Exception as exc:  # CacheUnavailable when fail_open is off: we never raise
            return self._failed(what, exc)
        if result is UNAVAILABLE:
            return self._failed(what, None)
        return True

    def _failed(self, what: str, exc: BaseException | None) -> bool:
        self.errors += 1
        reason = "Redis unavailable" if exc is None else f"{type(exc).__name__}: {exc}"
        self._log.warning("stats", "cannot %s this worker's stats (%s)", what, reason)
        return False

    def _cache_or_raise(self) -> Cache:
        cache = self._cache()
        if cache is None:
            raise RuntimeError("the cache of this stats publisher is gone")
        return cache


def stats_prefix(cache: Cache) -> str:
    """What every stats key of the cache's prefix and schema version starts with."""
    return cache.layout.stats_prefix


def read_published(cache: Cache) -> list[dict[str, Any]] | None:
    """Every worker's published figures (SMEMBERS + MGET), or None when Redis is
    unavailable. Keys in the index whose figures expired (dead workers) leave it."""
    index = cache.layout.stats_index

    def read(client: Any) -> list[Any]:
        keys = sorted(client.smembers(index))
        if not keys:
            return []
        mget = getattr(client, "mget_nonatomic", client.mget)  # cluster: keys on many slots
        raws = list(mget(keys))
        gone = [key for key, raw in zip(keys, raws, strict=True) if raw is None]
        if gone:
            client.srem(index, *gone)
        return raws

    try:
        raws = tier_of(cache).run("stats read", read)
    # ResponseError: an error reply that is no outage (a foreign key of another type at
    # the index, a user whose ACL forbids SMEMBERS): the figures are incomplete, no 500.
    except (TieredCacheError, redis.ResponseError):
        return None
    if raws is UNAVAILABLE:
        return None
    return [record for raw in raws if (record := _parse(raw)) is not None]


_FIELDS: Final = {
    "host": str,
    "id": str,
    "app": str,
    "pid": int,
    "started": float,
    "published": float,
}
"""What a record must hold, and of which type, for the readers to use it: anything else
there is junk, and junk never fails a reader."""


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    """A published record, or None for a key that expired between SMEMBERS and MGET, or
    for junk: bytes that are no JSON (or nest deeper than json can follow), or a record
    without the fields of :data:`_FIELDS`, each of its type (text, UTF-8). Its
    figures that are not numbers, or whose names are not UTF-8, are dropped."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("stats"), dict):
        return None
    for name, kind in _FIELDS.items():
        if not _is(record.get(name), kind):
            return None
    # Figures are finite numbers (flags are bools): anything else is left out, not
    # summed (json reads NaN, which no JSON reply may hold, and ints too wide for a
    # float, which the Prometheus text cannot print).
    figures = record["stats"].items()
    record["stats"] = {k: v for k, v in figures if _is(k, str) and (type(v) is bool or _finite(v))}
    return record


def _is(value: Any, kind: type) -> bool:
    """Whether ``value`` is a ``kind`` (an int is a float; a bool is neither; a float is
    finite; a str is UTF-8: json reads a lone surrogate, "\\ud800", that the Prometheus
    text and click cannot write)."""
    if kind is float:
        return _finite(value)
    if kind is str and type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return type(value) is kind


def _finite(value: Any) -> bool:
    """Whether ``value`` is an int or float that a float holds, and not NaN or infinite."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int wider than any float
        return False


def snapshot(cache: Cache, publisher: StatsPublisher | None) -> dict[str, Any]:
    """Every worker's figures and their totals.

    This process is always in, with its live figures (they replace what it last
    published; a CLI process, which does not publish, is shown too).

    :returns: ``{"workers": [...], "totals": {...}, "complete": bool}``; ``complete`` is
        false when Redis could not be read (then only this process is shown).
    """
    mine = None
    if publisher is not None and publisher.running:
        # This worker is shown as it now stands in Redis: a later read served by another
        # worker then shows these very figures or newer ones, and a counter never seems
        # to go backwards. (Only from a worker that publishes: a CLI process must not
        # pose as one.)
        mine = publisher.published(cache)
    published = read_published(cache)
    workers = list(published or [])
    now = time.time()
    if publisher is not None:
        mine = mine or publisher.record(cache)
        workers = [w for w in workers if not _same_worker(w, mine)]
        workers.append({**mine, "this_process": True})
    for worker in workers:
        worker.setdefault("this_process", False)
        worker["age"] = round(max(now - float(worker.get("published", now)), 0.0), 3)
    workers.sort(key=lambda w: (str(w.get("host")), int(w.get("pid", 0)), str(w.get("id"))))
    return {"workers": workers, "totals": totals(workers), "complete": published is not None}


def _same_worker(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "pid", "id"))


def totals(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over workers; ``hit_ratio`` from the sums; flags become counts of workers."""
    summed: dict[str, Any] = {"workers": len(workers)}
    for worker in workers:
        for name, value in worker["stats"].items():
            if isinstance(value, bool):
                summed[name] = summed.get(name, 0) + int(value)
            elif isinstance(value, int | float) and name != "hit_ratio":
                summed[name] = summed.get(name, 0) + value
    hits = summed.get("l1_hits", 0) + summed.get("l2_hits", 0)
    lookups = hits + summed.get("misses", 0)
    summed["hit_ratio"] = hits / lookups if lookups else 0.0
    return summed


class StatsCollector:
    """A prometheus_client collector over one :func:`snapshot`, labelled by worker."""

    def __init__(self, workers: list[dict[str, Any]]) -> None:
        self._workers = _unique_workers(workers)

    def collect(self) -> Iterator[Metric]:
        """Yield one family per figure, one sample per worker."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, doc in COUNTERS.items():
            counter = CounterMetricFamily(f"tiered_cache_{name}", doc, labels=LABELS)
            self._add(counter, name)
            yield counter
        for name, doc in GAUGES.items():
            gauge = GaugeMetricFamily(f"tiered_cache_{name}", doc, labels=LABELS)
            self._add(gauge, name)
            yield gauge
        yield from self._worker_gauges(GaugeMetricFamily)

    def _add(self, family: Any, name: str) -> None:
        for labels, worker in self._workers:
            value = worker["stats"].get(name)
            if isinstance(value, int | float):
                family.add_metric(labels, float(value))

    def _worker_gauges(self, gauge: Any) -> Iterator[Metric]:
        started = gauge(
            "tiered_cache_worker_start_time_seconds", "When the worker started.", labels=LABELS
        )
        age = gauge("tiered_cache_stats_age_seconds", "Age of these figures.", labels=LABELS)
        for labels, worker in self._workers:
            started.add_metric(labels, float(worker.get("started", 0.0)))
            age.add_metric(labels, float(worker.get("age", 0.0)))
        yield started
        yield age
        yield gauge("tiered_cache_workers", "Workers publishing figures.", value=len(self._workers))


def _unique_workers(workers: list[dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
    """Label values per worker; a record seen twice is left out, since Prometheus
    refuses two samples with the same labels."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for worker in workers:
        labels = [str(worker.get(name, "")) for name in LABELS]
        if tuple(labels) not in seen:
            seen.add(tuple(labels))
            out.append((labels, worker))
    return out


def prometheus_text(workers: list[dict[str, Any]]) -> tuple[bytes, str]:
    """The Prometheus exposition of the workers' figures, and its content type.

    :raises ImportError: naming the ``prometheus`` extra when prometheus_client is missing.
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError as exc:
        raise ImportError(
            "/_tiered_cache/metrics needs prometheus_client: pip install 'tiered-cache[prometheus]'"
        ) from exc
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(workers))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def live_publishers() -> list[StatsPublisher]:
    """Every :class:`StatsPublisher` alive in this process (stopped ones too)."""
    return registered(StatsPublisher)


def _stop_all() -> None:
    """At exit (a gunicorn worker ending, say) take this process's figures out of Redis."""
    for publisher in live_publishers():
        publisher.stop(timeout=1.0)


atexit.register(_stop_all)
