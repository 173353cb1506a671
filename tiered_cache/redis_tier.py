"""L2: the Redis client, its short timeouts, the circuit breaker and the error boundary.

Every Redis call of the engine goes through :meth:`RedisTier.run`, the one place where
Redis errors are caught, counted, logged (rate-limited) and either turned into
:data:`UNAVAILABLE` (fail-open) or raised as :class:`CacheUnavailable` with the Redis
error as ``__cause__``.

redis-py's defaults (a 5 s socket timeout, three retries with backoff) would make every
request wait out a hung Redis; cache traffic uses one short timeout for connecting and
for each reply, and no retries: the breaker, not a retry loop, handles an outage.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._log import RateLimitedLog
from .errors import CacheUnavailable, ConfigurationError

T = TypeVar("T")
# A Redis, RedisCluster or Sentinel-managed client: the engine uses their common commands.
Client = Any
_UNLINK_BATCH = 500


class Unavailable(enum.Enum):
    """The type of :data:`UNAVAILABLE`."""

    UNAVAILABLE = "UNAVAILABLE"


UNAVAILABLE = Unavailable.UNAVAILABLE
# RedisClusterException is no RedisError: a cluster client raises it when no node answers.
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)

# Error replies that say the server cannot serve now, not that the command or the key is
# wrong: a replica after a failover (READONLY), memory full under noeviction (OOM), a
# cluster without quorum or resharding (CLUSTERDOWN, MASTERDOWN, TRYAGAIN), a long script
# (BUSY), failed persistence (MISCONF), too few replicas (NOREPLICAS). redis-py has
# classes for some; the others are plain ResponseErrors (whose text a pipeline prefixes).
_OUTAGE_CLASSES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
_OUTAGE_CODES = re.compile(r"(?:^|caused error: )(?:BUSY|MISCONF|NOREPLICAS) ")


def outage_reply(exc: redis.ResponseError) -> bool:
    """Whether an error reply means Redis cannot serve now: an outage, not a bad command."""
    return isinstance(exc, _OUTAGE_CLASSES) or _OUTAGE_CODES.search(str(exc)) is not None


def without_outages(results: list[Any]) -> list[Any]:
    """The results of ``pipe.execute(raise_on_error=False)``, after raising the first
    :func:`outage_reply` among them (for :meth:`RedisTier.run` to handle as an outage)."""
    for result in results:
        if isinstance(result, redis.ResponseError) and outage_reply(result):
            raise result
    return results


def lua_source(name: str) -> str:
    """The source of ``tiered_cache/lua/<name>``."""
    return (resources.files(__package__) / "lua" / name).read_text(encoding="utf-8")


def client_from_url(url: str, *, socket_timeout: float) -> Client:
    """Make a redis-py client for ``url`` with short timeouts and no retries.

    :param url: ``redis://``, ``rediss://``, ``unix://``,
        ``redis+sentinel://host:port[,host:port]/service[/db]`` or
        ``redis+cluster://host:port``.
    :param socket_timeout: seconds to connect and to wait for each reply.
    :raises ConfigurationError: naming ``TIERED_CACHE_REDIS_URL`` when the URL is unusable.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    parts = urlsplit(url)
    try:
        if parts.scheme == "redis+sentinel":
            return _sentinel_client(parts, options)
        if parts.scheme == "redis+cluster":
            from redis.cluster import RedisCluster

            host, port = parts.hostname, parts.port or 6379
            if parts.username:
                options["username"] = unquote(parts.username)
            if parts.password:
                options["password"] = unquote(parts.password)
            return LazyCluster(lambda: RedisCluster(host=host, port=port, **options))
        return redis.Redis.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError("TIERED_CACHE_REDIS_URL", url, str(exc)) from exc


class LazyCluster:
    """A ``RedisCluster`` made on its first use, which is a Redis call.

    Making one asks a node for the slot map, so a cluster that is down would stop the
    app from booting (and raise outside any error boundary) instead of failing open.
    Made lazily, the first call that needs it makes it, inside :meth:`RedisTier.run`,
    where a cluster that cannot be reached is an outage like any other. What the code
    asks of a client without calling Redis (is it a cluster, a key's slot, a script's
    SHA) is answered without making it.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        made = self._made
        if made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._make()
                made = self._made
        return made

    def after_fork(self) -> None:
        """Replace the lock, which a thread making the client may have held at the fork
        (the child's first Redis call would wait on it for ever)."""
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client(), name)

    def mget_nonatomic(self, *args: Any, **kwargs: Any) -> Any:
        """MGET across slots (its presence says "a cluster")."""
        return self._client().mget_nonatomic(*args, **kwargs)

    def get_primaries(self) -> Any:
        """The primary nodes."""
        return self._client().get_primaries()

    @staticmethod
    def keyslot(key: str | bytes) -> int:
        """The hash slot of ``key``, computed here."""
        from redis.crc import key_slot

        return key_slot(key.encode() if isinstance(key, str) else key)

    def register_script(self, script: str | bytes) -> Any:
        """A ``Script`` on this client; as bytes, its SHA needs no connection's encoder."""
        from redis.commands.core import Script

        return Script(self, script.encode() if isinstance(script, str) else script)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the cluster's connections, if it was ever made."""
        if self._made is not None:
            self._made.close()


def _sentinel_client(parts: Any, options: dict[str, Any]) -> Client:
    """A master client found through the Sentinels named in a ``redis+sentinel`` URL."""
    from redis.sentinel import Sentinel

    hosts = []
    for hostport in unquote(parts.netloc.rpartition("@")[2]).split(","):
        host, _, port = hostport.partition(":")
        hosts.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a redis+sentinel URL names the service: redis+sentinel://h:p/service")
    db = int(path[1]) if len(path) > 1 else int(parse_qs(parts.query).get("db", ["0"])[0])
    sentinel = Sentinel(hosts, sentinel_kwargs=dict(options), **options)  # type: ignore[no-untyped-call]
    # The URL's user and password are the master's (percent-decoded, as in any URL).
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return sentinel.master_for(  # type: ignore[no-untyped-call]
        path[0], db=db, username=username, password=password, **options
    )


def get_reply(
    client: Client, key: str, *, ex: int | None = None
) -> bytes | redis.ResponseError | None:
    """GET ``key`` (GETEX, sliding its TTL to ``ex`` seconds, when given); an error reply
    (the key holds a list, say) is returned, not raised.

    Such a key is foreign data under our prefix, a miss for the reader, not an outage
    (an :func:`outage_reply` is raised, for :meth:`RedisTier.run` to handle).
    """
    try:
        if ex is not None:
            return client.getex(key, ex=ex)  # type: ignore[no-any-return]
        return client.get(key)  # type: ignore[no-any-return]
    except redis.ResponseError as exc:
        if outage_reply(exc):
            raise
        return exc


def unlink_matching(
    client: Client, pattern: str, *, keep: Callable[[bytes], bool] | None = None
) -> int:
    """UNLINK every key matching the glob ``pattern`` but those ``keep`` says to keep.

    SCAN, never KEYS, so a large keyspace never blocks the server; one UNLINK per key,
    500 to a pipeline, because a cluster may hold the keys on different slots.

    :returns: how many keys were deleted.
    """
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        if keep is None or not keep(key):
            batch.append(key)
        if len(batch) >= _UNLINK_BATCH:
            deleted += _unlink(client, batch)
            batch = []
    return deleted + _unlink(client, batch)


def _unlink(client: Client, keys: list[bytes]) -> int:
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(pipe.execute())


class Breaker:
    """A circuit breaker: open after ``failures`` consecutive errors, for ``reset`` seconds.

    Then half-open: one caller probes Redis; success closes the breaker, failure opens
    it for another ``reset`` seconds. While open, callers are refused in microseconds.
    """

    def __init__(
        self, failures: int, reset: float, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = failures
        self._reset = reset
        self._timer = timer
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._prober = 0
        """The thread ident that claimed the half-open probe (meaningful while probing)."""
        self.opened = 0

    @property
    def is_open(self) -> bool:
        """True while calls are being refused."""
        return self._failures >= self._limit

    def allow(self) -> bool:
        """Tell whether a call may go to Redis now (claims the probe when half-open)."""
        if self._failures < self._limit:
            return True
        with self._lock:
            if self._probing or self._timer() < self._open_until:
                return False
            self._probing = True
            self._prober = threading.get_ident()
            return True

    def undecided(self) -> None:
        """A call ended without telling whether Redis works (a bug raised): if it was the
        probe, let the next call probe instead of refusing every call for ever.

        Only the thread that claimed the probe gives it up: a call let through before
        the breaker opened, ending now, must not free another thread's claim (two probes
        at once would double the load on a Redis that is struggling).
        """
        if self._probing:
            with self._lock:
                if self._prober == threading.get_ident():
                    self._probing = False

    def success(self) -> None:
        """Record a call that worked."""
        if self._failures or self._probing:
            with self._lock:
                self._failures = 0
                self._probing = False

    def failure(self) -> None:
        """Record a call that failed."""
        with self._lock:
            self._probing = False
            self._failures += 1
            if self._failures >= self._limit:
                if self._timer() >= self._open_until:
                    self.opened += 1
                self._open_until = self._timer() + self._reset

    def reset(self) -> None:
        """Close the breaker; after a fork the child starts with a clean slate.

        The lock is replaced, not taken: another thread may have held it at the fork.
        """
        self._lock = threading.Lock()
        self._failures = 0
        self._probing = False
        self._open_until = 0.0


class RedisTier:
    """The error boundary around one Redis client.

    Besides the breaker, which counts failures across the process, a thread whose Redis
    call has just timed out does not try another for ``quiet`` seconds: its calls fail at
    once. A request runs in one thread, so a stalled Redis costs it about one socket
    timeout in all, not one per call it would have made (the namespace version, the page,
    the store, the session, the rate limit...), even before the breaker opens. Fast
    failures (connection refused) are left to the breaker: trying again costs little.

    :param quiet: seconds a thread skips Redis after a timeout (the socket timeout).
    """

    def __init__(
        self,
        client: Client,
        *,
        breaker: Breaker,
        fail_open: bool,
        log: RateLimitedLog,
        quiet: float = 0.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self.fail_open = fail_open
        self._log = log
        self._quiet = quiet
        self._timer = timer
        self._failed = threading.local()
        self.errors = 0

    @property
    def log(self) -> RateLimitedLog:
        """The rate-limited log of the cache this tier belongs to (renewed in a forked
        child with the cache)."""
        return self._log

    def run(
        self, what: str, call: Callable[[Client], T], *, fail_open: bool | None = None
    ) -> T | Unavailable:
        """Call ``call(client)`` unless the breaker is open (or this thread's last call
        timed out less than ``quiet`` seconds ago).

        :param what: names the operation in logs and errors.
        :param fail_open: overrides the tier's own setting for this call (sessions and
            rate limits decide for themselves what an outage means).
        :returns: its result, or :data:`UNAVAILABLE` when Redis failed and we fail open.
        :raises CacheUnavailable: when Redis failed and we do not fail open.
        :raises redis.ResponseError: an error reply ``call`` did not handle (a bug of
            ours, not an outage: it does not count against the breaker). An
            :func:`outage_reply` (READONLY after a failover, OOM...) is an outage.
        """
        failed = self._failed
        until = getattr(failed, "until", 0.0)
        if fail_open is None:
            fail_open = self.fail_open
            until = max(until, getattr(failed, "held", 0.0))  # see hold_off
        if until and until > self._timer():
            return self._unavailable(what, None, fail_open, "a call just failed in this thread")
        if not self.breaker.allow():
            return self._unavailable(what, None, fail_open, "circuit breaker open")
        try:
            result = call(self.client)
        except redis.ResponseError as exc:
            if outage_reply(exc):
                return self._outage(what, exc, fail_open)
            # Redis answered: it is up. An error reply is the caller's business.
            self.breaker.success()
            raise
        except REDIS_ERRORS as exc:
            if isinstance(exc, redis.TimeoutError | TimeoutError):
                failed.until = self._timer() + self._quiet
            return self._outage(what, exc, fail_open)
        except BaseException:
            self.breaker.undecided()
            raise
        self.breaker.success()
        return result

    def hold_off(self) -> None:
        """Fail this thread's cache calls at once for ``quiet`` seconds.

        For a caller whose next calls would depend on one that just failed: a key built
        from a namespace version Redis could not give must not be read or written. Only
        calls that take the tier's own ``fail_open`` (the cache's) are held off; sessions
        and rate limits, which pass their own, still try Redis. A thread already holding
        off is not held longer: it must get back to Redis when the time is up.
        """
        now = self._timer()
        if getattr(self._failed, "held", 0.0) <= now:
            self._failed.held = now + self._quiet

    def _outage(self, what: str, exc: BaseException, fail_open: bool) -> Unavailable:
        """A call failed for want of a working Redis: count it, then fail open or raise."""
        self.breaker.failure()
        self.errors += 1
        return self._unavailable(what, exc, fail_open)

    def reset(self) -> None:
        """Forget past failures: the breaker's and every thread's (after a fork)."""
        self.breaker.reset()
        self._failed = threading.local()
        if isinstance(self.client, LazyCluster):
            self.client.after_fork()

    def _unavailable(
        self, what: str, exc: BaseException | None, fail_open: bool, reason: str = ""
    ) -> Unavailable:
        """Fail open (log, count, return the sentinel) or raise CacheUnavailable."""
        if exc is not None:
            reason = f"{type(exc).__name__}: {exc}"
        if not fail_open:
            raise CacheUnavailable(f"Redis unavailable during {what}: {reason}") from exc
        self._log.warning("redis", "Redis unavailable during %s (%s); failing open", what, reason)
        return UNAVAILABLE
