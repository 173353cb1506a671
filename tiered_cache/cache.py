"""``Cache`` and ``Namespace``: the two tiers composed, with no Flask anywhere.

Reads go L1 -> L2 -> loader; writes go to L2 and the bus in one pipelined round trip and
then to this process's L1. The rules that make this correct under concurrency:

- *Lock-free L1 hits.* A hit is an ``OrderedDict`` lookup, one clock read and a
  ``move_to_end``; no lock, no key formatting (local keys are the user's key, or a tuple
  for namespaced and memoized entries; the Redis key is only built on a miss):
  :mod:`tiered_cache.hit_path`.
- *No stale refill.* A reader takes the L1 invalidation sequence before its Redis read
  and fills L1 only if nothing invalidated that key in between (:mod:`tiered_cache.l1`).
  A writer fills L1 the same way, and its fill counts as an invalidation, so a slower
  reader holding the older value cannot overwrite it.
- *Bounded staleness.* An L1 entry lives at most ``l1_ttl``; while the bus cannot vouch
  for this process (:attr:`Bus.fresh_until`), only entries younger than
  ``l1_disconnected_ttl`` are served.
- *Fail-open.* Every Redis call goes through :class:`~tiered_cache.redis_tier.RedisTier`.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Final, TypeVar, Unpack

from redis import ResponseError

from ._durations import checked_seconds
from ._forks import forget, renew_after_fork
from ._log import RateLimitedLog
from .bus import Barrier, Bus, Message, NoBus
from .config import CacheConfig, CacheSettings
from .copying import copier_for
from .errors import CacheUnavailable, ConfigurationError, TieredCacheError
from .flight import add, overtake, release, store_if_held
from .framing import HEADER_SIZE, Frame
from .hit_path import L1Reader, make_reader
from .keys import DEFAULT_NAMESPACE, KeyLayout, encode_key, encode_name
from .keyspace import Keyspace, Namespace
from .l1 import Entry, Reading, make_l1
from .loading import Load, Loading
from .locks import DistributedLock
from .owed import Owed
from .redis_tier import (
    UNAVAILABLE,
    Breaker,
    Client,
    RedisTier,
    Unavailable,
    client_from_url,
    get_reply,
    lua_source,
    unlink_matching,
    without_outages,
)
from .sentinels import MISS
from .serializers import make_serializer
from .sizing import entry_size
from .stored import COUNTER, StoredValues, expired
from .versions import JUNK_FROM, NamespaceVersions, fresh_start, start_counter

if TYPE_CHECKING:
    from .memoize import Memo, MemoizedFunction, P

T = TypeVar("T")
R = TypeVar("R")

Listener = Callable[[Message | None], None]
"""Called in the listener thread with every message from another process, and with None
after every (re)subscription, when messages may have been missed."""


_REPAY: Final = "repay owed invalidations"


def _refused(reply: Any) -> bool:
    """Whether a pipeline reply is an error (outages were raised before: this is one
    that says no, such as an ACL's NOPERM)."""
    return isinstance(reply, ResponseError)


def _foreign_counter(reply: Any) -> bool:
    """Whether an INCR reply says the counter holds junk (see :data:`_FOREIGN_COUNTER`)."""
    if isinstance(reply, ResponseError):
        return bool(_FOREIGN_COUNTER.search(str(reply)))
    return isinstance(reply, int) and reply >= JUNK_FROM


_FOREIGN_COUNTER: Final = re.compile(r"WRONGTYPE|not an integer|would overflow")
"""What Redis answers an INCR of a key that holds no counter (or foreign bytes that read
as the largest integer, which no version counter of ours reaches)."""


def _decodes_responses(client: Any) -> bool:
    """Whether redis-py decodes this client's replies to ``str``."""
    try:
        return bool(client.get_encoder().decode_responses)
    except AttributeError:  # not a redis-py client: let its calls show what it is
        return False


class Cache(Keyspace):
    """A two-tier cache: an L1 in this process over a Redis L2 shared by every worker.

    :param redis: a redis-py client to use instead of one made from ``redis_url`` (its
        timeouts and retries are then the caller's choice; not ``decode_responses``).
    :param timer: the monotonic clock (injectable for tests).
    :param settings: the settings of :class:`~tiered_cache.config.CacheConfig`,
        lower-case (``l1_max_items=...``).
    :raises ConfigurationError: naming the first bad setting.
    """

    def __init__(
        self,
        *,
        redis: Client | None = None,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        **settings: Unpack[CacheSettings],
    ) -> None:
        self.config = config = CacheConfig.resolve(settings)
        self._cache = self
        self._ns = None
        self._timer = timer
        self._clock = clock
        self._dttl = config.l1_disconnected_ttl
        self._log = RateLimitedLog()
        self._layout = KeyLayout(config.prefix, config.version)
        self._default_base = self._layout.space(DEFAULT_NAMESPACE, 0)
        self._serializer = make_serializer(config.serializer, secret_key=config.secret_key)
        self._owns_client = redis is None
        if redis is not None and _decodes_responses(redis):
            raise ConfigurationError(
                "redis",
                redis,
                "a client made with decode_responses=True hands back text where the cache "
                "reads bytes; give it one without (it may share the same connection pool "
                "settings)",
            )
        client = redis or client_from_url(config.redis_url, socket_timeout=config.socket_timeout)
        breaker = Breaker(config.breaker_failures, config.breaker_reset, timer)
        self._tier = RedisTier(
            client,
            breaker=breaker,
            fail_open=config.fail_open,
            log=self._log,
            quiet=config.socket_timeout,
            timer=timer,
        )
        self._cluster = hasattr(client, "mget_nonatomic")
        self._counter_restart = client.register_script(lua_source("counter_restart.lua"))
        self._namespaces: dict[str, Namespace] = {}
        self._versions_current: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._closed = False
        self._reset_process_state()
        # A forked child must not use its parent's sockets, listener thread, locks or L1.
        renew_after_fork(self, Cache._reset_process_state)

    def _reset_process_state(self) -> None:
        """Create everything that belongs to one process (again, after a fork)."""
        config = self.config
        self._sender = uuid.uuid4().hex
        self._l1_on = config.l1_max_items > 0 and config.l1_max_bytes > 0
        self._l1 = make_l1(
            config.l1_backend,
            max_items=config.l1_max_items,
            max_bytes=config.l1_max_bytes,
        )
        self._bus: Bus | NoBus = self._make_bus() if config.invalidation else NoBus()
        self._values = StoredValues(self._serializer, self._clock, self._log)
        # Without a bus no bump is ever heard: a fetched version is trusted for l1_ttl,
        # as an L1 entry is, not for as long as NoBus vouches (for ever).
        on = config.invalidation
        self._versions = NamespaceVersions(
            self._tier,
            self._layout,
            disconnected_ttl=self._dttl if on else config.l1_ttl,
            bus_fresh_until=(lambda: self._bus.fresh_until) if on else (lambda: 0.0),
            barrier=self._barrier,
            wait=config.socket_timeout,
            timer=self._timer,
            current=self._versions_current,
        )
        self._loading = Loading(self)
        # A forked child owes nothing: its parent pays its own.
        self._owed = Owed(pause=config.breaker_reset, timer=self._timer)
        self._start_lock = threading.Lock()
        self._hit_counts: list[Callable[[], int]] = []  # one per L1 reader
        self._l1_value = self._l1_reader(lambda _local, _default: MISS)
        self._l1_look = self._l1_reader(lambda _local, _default: MISS, counted=False)
        # The default namespace's get: the hit path itself, shadowing Keyspace.get.
        self.get = self._l1_reader(self._get_after_l1)  # type: ignore[method-assign]
        self._tier.reset()
        self._log.after_fork()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.l2_hits = self.misses = 0
        self.route_l1_hits = 0
        """Pages served from L1, through Flask or the fast path (once a request)."""
        self.loader_calls = self.stampede_waits = self.stale_served = 0
        self.early_refreshes = self.ratelimit_refusals = 0

    def _make_bus(self) -> Bus:
        return Bus(
            self._tier.client,
            self._layout.channel,
            sender=self._sender,
            on_message=self._on_message,
            on_subscribed=self._on_subscribed,
            on_lost=self._on_lost,
            disconnected_ttl=self._dttl,
            socket_timeout=self.config.socket_timeout,
            log=self._log,
            timer=self._timer,
        )

    @property
    def redis(self) -> RedisTier:
        """The Redis client behind L2 with its breaker and error boundary.

        For the features built on the engine (sessions, rate limits, endpoints): they
        share its connection pool, short timeouts and circuit breaker.
        """
        return self._tier

    @property
    def layout(self) -> KeyLayout:
        """The Redis key layout of this cache's prefix and schema version."""
        return self._layout

    def __repr__(self) -> str:
        return f"<Cache prefix={self.config.prefix!r} version={self.config.version}>"

    # -- the bus ---------------------------------------------------------------------

    def connect(self) -> None:
        """Connect now rather than on first use: ping Redis, start the invalidation listener.

        For servers that fork workers (see :mod:`tiered_cache.gunicorn`): a worker then
        hears other workers' writes before its first request. Fails open: with Redis
        unreachable it returns after about one socket timeout for the ping and two for the
        listener, which keeps trying in the background.
        """
        self._tier.run("connect", lambda client: client.ping(), fail_open=True)
        self._ensure_bus()

    def _barrier(self) -> contextlib.AbstractContextManager[Barrier | None]:
        """The bus's barrier for a version read or bump (:meth:`Bus.barrier`); none with
        L1 off, where no local copy could be older than the version."""
        return self._bus.barrier() if self._l1_on else _NO_BARRIER

    def _ensure_bus(self) -> None:
        """Start the listener in this process on first use of Redis (fork-friendly)."""
        if not self._bus.started:
            with self._start_lock:
                if not self._bus.started:
                    self._bus.start(wait=2 * self.config.socket_timeout)

    def _reading(self) -> Reading | nullcontext[int]:
        """Bracket a Redis round trip whose result may fill L1 (see :mod:`tiered_cache.l1`).

        The bus comes first: its first subscription flushes L1, which must not refuse the
        fill of the very call that started it. With L1 off there is nothing to bracket.
        """
        self._ensure_bus()
        return self._l1.reading() if self._l1_on else _NOTHING_TO_FILL

    def _on_message(self, message: Message) -> None:
        """Apply another process's changes to this one (listener thread)."""
        if message.flush:
            self._l1.clear()
            self._loading.waiters.wake_all()
        for gkey in message.keys:
            self._l1.invalidate(gkey)
        for name in message.namespaces:
            self._versions.forget(name)
        self._loading.waiters.wake(message.keys + message.aborted)
        self._tell_listeners(message)

    def _on_subscribed(self) -> None:
        """After a (re)subscription messages may have been missed: forget local state."""
        self._l1.clear()
        self._versions.clear()
        self._loading.waiters.wake_all()
        self._tell_listeners(None)

    def _on_lost(self) -> None:
        """Wake the waiters sleeping on an announcement that can no longer come: they read
        Redis again, and with Redis gone they load (fail open) instead of sleeping out
        ``lock_timeout``."""
        self._loading.waiters.wake_all()

    def _listen(self, listener: Listener) -> None:
        """Let a feature built on the engine hear the bus too (see :data:`Listener`)."""
        self._listeners.append(listener)

    def _tell_listeners(self, message: Message | None) -> None:
        for listener in self._listeners:
            try:
                listener(message)
            except Exception as exc:  # one feature's bug must not stop invalidation
                self._log.warning("bus-listener", "%r failed on %r: %r", listener, message, exc)

    def _repay(self) -> None:
        """Pay what this process owes (see :mod:`tiered_cache.owed`): delete the keys and
        bump the namespaces, announced on the bus, in one round trip; owed again if Redis
        is still away. Redis's failures never reach the caller: it rides on an unrelated
        call (what is not Redis's answer, a bug or an interrupt, is owed again and raised)."""
        keys, names = self._owed.take()
        if not (keys or names):
            return
        counters = [self._layout.counter(name) for name in names]
        marks = self._marks(keys)

        def repay(pipe: Any) -> None:
            overtake(pipe, marks)
            for gkey in keys:
                pipe.unlink(gkey)
            for counter in counters:
                start_counter(pipe, counter)
                pipe.incr(counter)

        try:
            result = self._write(_REPAY, repay, check=False, keys=keys, namespaces=names)
        except CacheUnavailable:
            result = UNAVAILABLE
        except BaseException:  # not Redis's answer (a bug, an interrupt): owed still
            self._owed.owe(keys, names)
            raise
        if result is UNAVAILABLE:
            self._owed.owe(keys, names)
            return
        result = result[len(marks) :]
        unpaid = [gkey for gkey, reply in zip(keys, result, strict=False) if _refused(reply)]
        bumps = result[len(keys) + 1 : len(keys) + 2 * len(names) : 2]
        for name, counter, bumped in zip(names, counters, bumps, strict=True):
            if _foreign_counter(bumped):  # as _bump would: replaced by a fresh start
                try:
                    restarted = self._restart_counter(name, counter, bumped)
                except CacheUnavailable:
                    restarted = UNAVAILABLE
                if restarted is UNAVAILABLE:
                    self._owed.owe(names=(name,))
            elif _refused(bumped):
                self._owed.owe(names=(name,))
        self._owed.owe(unpaid)  # an error reply that is no outage (an ACL's NOPERM)
        for gkey in keys:
            self._l1.invalidate(gkey)
        for name in names:
            self._versions.forget(name)
        self._log.warning(
            "repaid",
            "paid %d deletes and %d namespace bumps owed since Redis failed (%d keys "
            "forgotten past the bound so far)",
            len(keys) - len(unpaid),
            len(names),
            self._owed.forgotten,
        )

    def _repay_after(self, keys: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        """After a write that reached Redis: ``keys`` it wrote or deleted, ``names`` it
        bumped, owe nothing more; then pay what else is owed."""
        if self._owed.due:
            self._owed.settle(keys, names)
            self._repay()

    def _announce(self, what: str, **news: Any) -> bool:
        """Announce ``news`` (:class:`Message` fields) alone; False if Redis is unavailable."""
        return self._write(what, lambda pipe: None, **news) is not UNAVAILABLE

    def _write(
        self,
        what: str,
        queue: Callable[[Any], object],
        *,
        unlock: tuple[str, bytes] | None = None,
        barrier: Barrier | None = None,
        check: bool = True,
        **news: Any,
    ) -> list[Any] | Unavailable:
        """Run the commands ``queue`` puts on a pipeline, and announce ``news`` on the bus.

        One round trip: the release of a single-flight lock, a barrier's mark and the
        PUBLISH ride in the same pipeline, after the writes. Cluster pipelines refuse EVAL
        and PUBLISH, so there they follow as calls of their own.

        :param unlock: a lock key and token to release.
        :param barrier: a barrier whose mark to publish after the writes.
        :param check: raise on a command's error reply (else it is in the results).
        :param news: the :class:`Message` fields (``keys``, ``namespaces``, ...).
        :returns: the commands' results (in order; the release's and PUBLISH's follow),
            or UNAVAILABLE.
        """
        self._ensure_bus()
        message = Message(self._sender, **news).encode() if self.config.invalidation else None

        def after(target: Any) -> None:
            if unlock is not None:
                release(target, *unlock)
            if barrier is not None:
                barrier.publish(target)
            if message is not None:
                target.publish(self._layout.channel, message)

        def call(client: Client) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            queue(pipe)
            if not self._cluster:
                after(pipe)
            results = without_outages(pipe.execute(raise_on_error=check))
            if self._cluster:
                after(client)
            return results

        try:
            return self._tier.run(what, call)
        finally:
            # The bus skips our own messages: wake this process's waiters here.
            self._loading.waiters.wake(news.get("keys", ()) + news.get("aborted", ()))

    # -- L1 -------------------------------------------------------------------------

    def _l1_reader(self, miss: Callable[[Any, Any], Any], *, counted: bool = True) -> L1Reader:
        """Build an L1 hit path over this process's L1 and bus (see :mod:`.hit_path`).

        :param counted: count its hits in ``l1_hits``; else its caller counts them, once
            a request (:attr:`route_l1_hits`).
        """
        read, hits = make_reader(self._l1, self._bus, self._timer, self._dttl, miss)
        if counted:  # else its count is never read
            self._hit_counts.append(hits)
        return read

    def _get_after_l1(self, key: str, default: Any) -> Any:
        """``get`` of the default namespace once L1 missed."""
        value = self._read(key, self._default_base + encode_key(key))
        return default if value is MISS else value

    def _entry(
        self,
        value: Any,
        local: Hashable,
        gkey: str,
        fresh_until: float,
        early: float,
        *,
        stored: int,
    ) -> Entry | None:
        """An L1 entry for ``value``, living until L1 or logical expiry, or None if expired.

        :param stored: the bytes ``value`` takes in Redis (see :func:`entry_size`).
        """
        now = self._timer()
        life = self.config.l1_ttl
        if fresh_until:
            life = min(life, fresh_until - self._clock() - early)
        if life <= 0:
            return None
        copy = copier_for(value)
        size = entry_size(
            value,
            local,
            gkey,
            copied=copy is not None,
            store=self._l1.entry_overhead,
            stored=stored,
        )
        return Entry(value, copy, now + life, now, size, gkey)

    def _fill(
        self,
        local: Hashable,
        gkey: str,
        frame: Frame,
        value: Any,
        since: int,
        *,
        early: float = 0.0,
    ) -> Any:
        """Fill L1 with a value just read from Redis; return what the reader may keep.

        That is ``value`` itself unless L1 now holds it too, then a private copy. A
        counter (``incr``'s) is never held: Redis expires it without a word on the bus.
        """
        if not self._l1_on or frame.tag == COUNTER:
            return value
        entry = self._entry(value, local, gkey, frame.fresh_until, early, stored=len(frame.payload))
        if entry is None or not self._l1.fill(local, entry, since) or entry.copy is None:
            return value
        return entry.copy(value)

    # -- reads ----------------------------------------------------------------------

    def _get(self, gkey: str) -> bytes | ResponseError | Unavailable | None:
        """One GET through the error boundary (then, Redis being back, what is owed)."""
        reply = self._tier.run("get", lambda client: get_reply(client, gkey))
        if self._owed.due and reply is not UNAVAILABLE:
            self._repay()
        return reply

    def _read(self, local: Hashable, gkey: str, *, decode: bool = True) -> Any:
        """Read ``gkey`` from Redis and fill L1; MISS when absent, expired or unreadable."""
        if not self._l1_on:  # nothing to fill: no bracket (the bare L2 path, measured)
            self._ensure_bus()
            return self._read_once(local, gkey, 0, decode=False)
        with self._reading() as since:
            return self._read_once(local, gkey, since, decode=decode)

    def _read_once(self, local: Hashable, gkey: str, since: int, *, decode: bool) -> Any:
        decoded = self._values.decode(gkey, self._get(gkey))
        if decoded is MISS or expired(decoded[0], self._clock()):
            self.misses += 1
            return MISS
        frame, value = decoded
        self.l2_hits += 1
        return self._fill(local, gkey, frame, value, since) if decode else value

    def _read_many(self, where: list[tuple[Hashable, str]], default: Any) -> list[Any]:
        results = [self._l1_value(local) for local, _ in where]
        missing = [i for i, value in enumerate(results) if value is MISS]
        if not missing:
            return results
        gkeys = [where[i][1] for i in missing]
        mget = "mget_nonatomic" if self._cluster else "mget"
        with self._reading() as since:
            raws = self._tier.run("get_many", lambda c: getattr(c, mget)(gkeys))
            if self._owed.due and raws is not UNAVAILABLE:
                self._repay()  # Redis is back; its owed keys' fills below are refused
            now = self._clock()
            for n, i in enumerate(missing):
                decoded = self._values.decode(where[i][1], raws if raws is UNAVAILABLE else raws[n])
                if decoded is MISS or expired(decoded[0], now):
                    self.misses += 1
                    results[i] = default
                    continue
                self.l2_hits += 1
                results[i] = self._fill(*where[i], decoded[0], decoded[1], since)
        return results

    # -- writes ---------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        """The L2 lifetime for a write: the default, validated, then jittered downwards."""
        seconds = self.config.default_timeout if timeout is None else timeout
        seconds = checked_seconds("timeout", seconds)
        return seconds * (1 - self.config.ttl_jitter * random.random())

    def _store(
        self,
        local: Hashable,
        gkey: str,
        value: Any,
        timeout: float | None,
        *,
        only_new: bool = False,
        delta: float = 0.0,
        stale_ttl: float = 0.0,
        unlock: tuple[str, bytes] | None = None,
        early: float = 0.0,
        overtaking: bool = True,
    ) -> bool:
        """Write one value and its announcement in one trip.

        :param unlock: a single-flight loader's lock and token: the value is stored only
            if no other write overtook the load, and the lock released (see
            :mod:`tiered_cache.flight`; False when overtaken).
        :param overtaking: whether a write without ``unlock`` overtakes a load in flight;
            False for a route's page, whose lock is its writer's own refresh lock.
        :param early: seconds before ``fresh_until`` at which this process's L1 copy ends.
        """
        ttl = self._timeout(timeout)
        data, held, fresh_until = self._values.encode(value, ttl, delta)
        px = math.ceil((ttl + stale_ttl) * 1000) if ttl else None
        scripted = unlock if not self._cluster else None
        overtakes = self._marks((gkey,)) if unlock is None and overtaking else ()
        adding = only_new and bool(overtakes)  # lua/add.lua overtakes only when it stored
        marks = () if adding else overtakes

        def write(pipe: Any) -> None:
            if scripted is not None:
                store_if_held(pipe, gkey, scripted, data, px)
            elif adding:
                add(pipe, gkey, data, px)
            else:
                overtake(pipe, marks)
                pipe.set(gkey, data, px=px, nx=only_new)

        owed = () if only_new else (gkey,)  # add's "only if absent" is the caller's to keep
        with self._reading() as since, self._dropping_on_error(gkey, owed=owed):
            result = self._write("set", write, unlock=None if scripted else unlock, keys=(gkey,))
            if result is UNAVAILABLE or not result[len(marks)]:
                self._l1.invalidate(gkey)
                if result is UNAVAILABLE:
                    self._owed.owe(owed)
                else:
                    self._repay_after()  # an add refused: the key's debt stands
                return False
            self._repay_after(keys=(gkey,))
            stored = len(data) - HEADER_SIZE  # the payload, as readers charge it
            entry = self._entry(held, local, gkey, fresh_until, early, stored=stored)
            self._keep(local, gkey, entry, since)
            return True

    def _marks(self, gkeys: Iterable[str]) -> tuple[str, ...]:
        """The keys whose loads in flight a write of ``gkeys`` overtakes (see
        :mod:`tiered_cache.flight`): all, but on a Cluster, whose pipelines refuse the
        script. Their marks are queued before the writes, and their replies come first:
        a loader's store that Redis runs between a write and its mark, which a pipeline
        read over several turns of its event loop allows, would find no mark."""
        return () if self._cluster else tuple(gkeys)

    @contextlib.contextmanager
    def _dropping_on_error(self, *gkeys: str, owed: tuple[str, ...] = ()) -> Iterator[None]:
        """Drop this process's copies of ``gkeys`` when a write raises (``fail_open`` off):
        a write whose reply was lost may still run, and its announcement with it, which
        reaches every worker but this one. Its keys ``owed`` are owed a delete."""
        try:
            yield
        except BaseException:
            for gkey in gkeys:
                self._l1.invalidate(gkey)
            self._owed.owe(owed)
            raise

    def _keep(self, local: Hashable, gkey: str, entry: Entry | None, since: int) -> None:
        """Hold a value this process wrote (read-your-writes) unless another write raced it."""
        if entry is None:
            self._l1.invalidate(gkey)
        else:
            self._l1.put(local, entry, since=since)

    def _store_many(self, items: list[tuple[Hashable, str, Any]], timeout: float | None) -> bool:
        writes = []  # (local, gkey, stored bytes, L1 copy, fresh_until, ttl)
        for local, gkey, value in items:
            ttl = self._timeout(timeout)
            writes.append((local, gkey, *self._values.encode(value, ttl, 0.0), ttl))

        gkeys = tuple(w[1] for w in writes)
        marks = self._marks(gkeys)

        def write_all(pipe: Any) -> None:
            overtake(pipe, marks)
            for _, gkey, data, _, _, ttl in writes:
                pipe.set(gkey, data, px=math.ceil(ttl * 1000) if ttl else None)

        with self._reading() as since, self._dropping_on_error(*gkeys, owed=gkeys):
            result = self._write("set_many", write_all, keys=gkeys)
            if result is UNAVAILABLE:
                self._owed.owe(gkeys)
            else:
                self._repay_after(keys=gkeys)
            for local, gkey, data, held, fresh_until, _ in writes:
                entry = None
                if result is not UNAVAILABLE:
                    entry = self._entry(
                        held, local, gkey, fresh_until, 0.0, stored=len(data) - HEADER_SIZE
                    )
                self._keep(local, gkey, entry, since)
        return result is not UNAVAILABLE

    def _delete(self, gkeys: list[str]) -> int:
        if not gkeys:
            return 0

        marks = self._marks(gkeys)

        def unlink(pipe: Any) -> None:
            overtake(pipe, marks)
            for gkey in gkeys:  # one UNLINK per key: a cluster may hold them on several slots
                pipe.unlink(gkey)

        try:
            result = self._write("delete", unlink, keys=tuple(gkeys))
        except BaseException:
            self._owed.owe(gkeys)
            raise
        finally:  # after the write (a read that began before it cannot refill), raised or not
            for gkey in gkeys:
                self._l1.invalidate(gkey)
        if result is UNAVAILABLE:
            self._owed.owe(gkeys)
        else:
            self._repay_after(keys=gkeys)
        return 0 if result is UNAVAILABLE else sum(result[len(marks) : len(marks) + len(gkeys)])

    def _incr(self, local: Hashable, gkey: str, delta: int) -> int | None:
        # Checked here: redis-py refuses a non-number as a DataError, which the error
        # boundary would count as an outage (three of them open the breaker for everyone).
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"incr() takes a whole number delta, not {delta!r}")
        if not -(2**63) <= delta < 2**63:
            raise ValueError(f"incr() delta {delta} is out of Redis's 64-bit range")
        timeout = self.config.default_timeout
        marks = self._marks((gkey,))

        def incr(pipe: Any) -> None:
            # SET NX first so a new counter gets a TTL (Redis 6.2 has no EXPIRE NX).
            overtake(pipe, marks)
            pipe.set(gkey, b"0", nx=True, px=math.ceil(timeout * 1000) if timeout else None)
            pipe.incrby(gkey, delta)

        try:
            result = self._write("incr", incr, check=False, keys=(gkey,))
        finally:
            self._l1.invalidate(gkey)
        if result is UNAVAILABLE:
            return None
        self._repay_after()  # a counter settles no debt: it is not the key's value
        total = result[len(marks) + 1]
        if isinstance(total, Exception):
            raise TieredCacheError(f"cannot increment {gkey!r}: {total}") from total
        return int(total)

    # -- get_or_set -----------------------------------------------------------------

    def _get_or_set(self, load: Load) -> Any:
        value = self._l1_value(load.local)
        return self._loading.get_or_set(load) if value is MISS else value

    # -- the rest of the public API ---------------------------------------------------

    def namespace(self, name: str) -> Namespace:
        """Return the namespace ``name``: the same methods, keys versioned together.

        :raises ValueError: when ``name`` is empty.
        """
        found = self._namespaces.get(name)
        if found is None:
            found = self._namespaces.setdefault(name, Namespace(self, name))
        return found

    def invalidate_namespace(self, name: str) -> int:
        """Give namespace ``name`` a new version: every key in it is gone, in every worker.

        One ``INCR`` and one announcement, in one round trip; old keys die by their TTLs.

        :returns: the new version, or 0 when Redis is unavailable and failing open.
        """
        return self._bump(encode_name(name))

    def _bump(self, encoded: str) -> int:
        # Another process's bump heard between our INCR's reply and the record below
        # would be overwritten by our older version, trusted for as long as the bus
        # stays up: the epoch says that a forget came in between.
        epoch = self._versions.epoch(encoded)
        with self._barrier() as barrier:
            version, restarted = self._incr_counter(encoded, barrier)
            if version is None:
                return 0
            # Ours to use only once the bus has handed over what was published before
            # our INCR, as for a version read (see versions.py); else read it again then.
            if not restarted and (barrier is None or barrier.passed(self.config.socket_timeout)):
                self._versions.heard(encoded, version, epoch)
            else:
                self._versions.forget(encoded)
        self._repay_after(names=(encoded,))
        return version

    def _incr_counter(self, encoded: str, barrier: Barrier | None) -> tuple[int | None, bool]:
        """INCR a namespace's counter and announce it, ``barrier``'s mark after the INCR:
        the new version (None when Redis is unavailable: owed), and whether it replaced
        a foreign counter (in a later trip than the mark's)."""
        counter = self._layout.counter(encoded)

        def bump(pipe: Any) -> None:
            start_counter(pipe, counter)
            pipe.incr(counter)

        restarted = False
        try:
            result = self._write(
                "invalidate_namespace", bump, barrier=barrier, check=False, namespaces=(encoded,)
            )
            version = UNAVAILABLE if result is UNAVAILABLE else result[1]
            if _foreign_counter(version):  # readers take it for version 0
                version = self._restart_counter(encoded, counter, version)
                restarted = True
            elif isinstance(version, ResponseError):
                raise version  # not about the counter (an ACL's NOPERM): the caller's
        except BaseException:  # it may still run, and be announced to every worker but this
            self._versions.forget(encoded)
            self._owed.owe(names=(encoded,))
            raise
        if version is UNAVAILABLE:
            self._versions.forget(encoded)
            self._owed.owe(names=(encoded,))
            return None, False
        return int(version), restarted

    def _restart_counter(self, encoded: str, counter: str, error: object) -> int | Unavailable:
        """Bump a version counter that holds what is no counter (foreign bytes, another
        type): readers take it for version 0 and INCR refuses it, so nothing could
        invalidate the namespace. ``lua/counter_restart.lua`` replaces it with a fresh
        start, above every version it ever had, unless another worker already did."""
        self._log.warning("namespace", "replacing a foreign version counter: %s", error)
        script = self._counter_restart
        version = self._tier.run(
            "invalidate_namespace",
            lambda client: script(keys=[counter], args=[fresh_start(), JUNK_FROM], client=client),
        )
        if version is UNAVAILABLE:
            return UNAVAILABLE
        announced = self._announce("invalidate_namespace", namespaces=(encoded,))
        return int(version) if announced else UNAVAILABLE

    def clear(self) -> int:
        """Delete every key under this prefix and schema version (SCAN + UNLINK, never KEYS).

        Namespace version counters are kept, so a version number is never reused.

        :returns: how many keys were deleted (0 when Redis is unavailable).
        """
        self._ensure_bus()
        layout = self._layout
        try:
            deleted = self._tier.run(
                "clear",
                lambda c: unlink_matching(c, layout.scan_pattern, keep=layout.kept_by_clear),
            )
            self._announce("clear", flush=True)
        finally:  # raised or not (fail_open off), some keys may be gone
            self._l1.clear()
            # The bus skips this process's own messages: tell its features (the deny cache).
            self._tell_listeners(Message(self._sender, flush=True))
        return 0 if deleted is UNAVAILABLE else deleted

    def lock(
        self, name: str, timeout: float = 10.0, blocking_timeout: float | None = None
    ) -> DistributedLock:
        """Return a distributed lock (redis-py's ``Lock``), usable as a context manager.

        Locks never fail open: with Redis unavailable, acquiring raises
        :class:`~tiered_cache.CacheUnavailable`.

        :param timeout: seconds the lock lives unless released, > 0.
        :raises ValueError: for a timeout that is not a number of seconds within bounds.
        """
        checked_seconds("lock timeout", timeout, zero=False)
        return DistributedLock(
            self._tier.client, self._layout.named_lock(name), timeout, blocking_timeout
        )

    def memoize(
        self,
        timeout: float | None = None,
        *,
        namespace: str | None = None,
        unless: Callable[[], bool] | None = None,
    ) -> Callable[[Callable[P, R]], MemoizedFunction[P, R]]:
        """Decorate a function so its results are cached per arguments.

        See :mod:`tiered_cache.memoize` for how arguments become keys.

        :param timeout: seconds, as :meth:`set`.
        :param namespace: a namespace whose invalidation also drops these results.
        :param unless: called before each call; when it returns true the cache is bypassed.
        :raises ValueError: for a ``timeout`` out of bounds, here rather than after the
            function ran on its first call.
        """
        from .memoize import memoized

        if timeout is not None:
            checked_seconds("memoize(timeout=...)", timeout)

        def decorate(fn: Callable[P, R]) -> MemoizedFunction[P, R]:
            return memoized(self, fn, timeout=timeout, namespace=namespace, unless=unless)

        return decorate

    def delete_memoized(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
        """Forget one call's cached result, or every result of ``fn`` when no args are given.

        :returns: keys deleted, or the function's new version when all were dropped.
        :raises TypeError: when ``fn`` is not memoized by this cache.
        """
        memo: Memo[Any, Any] | None = getattr(fn, "memo", None)
        if memo is None or memo.cache is not self:
            raise TypeError(f"{fn!r} is not memoized by {self!r}")
        if not args and not kwargs:
            return self._bump(memo.counter)
        return self._delete([memo.redis_key(args, kwargs)])

    def stats(self) -> dict[str, Any]:
        """This process's figures (SPEC section 8), as a flat dict."""
        l1_hits = sum(count() for count in self._hit_counts) + self.route_l1_hits
        lookups = l1_hits + self.l2_hits + self.misses
        return {
            "l1_hits": l1_hits,
            "l2_hits": self.l2_hits,
            "misses": self.misses,
            "hit_ratio": (l1_hits + self.l2_hits) / lookups if lookups else 0.0,
            "l1_items": len(self._l1),
            "l1_bytes": self._l1.nbytes,
            "l1_evictions": self._l1.evictions,
            "invalidations_received": self._bus.received,
            "bus_connected": self._bus.connected,
            "bus_reconnects": self._bus.reconnects,
            "breaker_open": self._tier.breaker.is_open,
            "breaker_opened": self._tier.breaker.opened,
            "redis_errors": self._tier.errors,
            "decode_errors": self._values.decode_errors,
            "loader_calls": self.loader_calls,
            "stampede_waits": self.stampede_waits,
            "stale_served": self.stale_served,
            "early_refreshes": self.early_refreshes,
            "version_guesses": self._versions.guesses,
            "ratelimit_refusals": self.ratelimit_refusals,
        }

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Stop the bus listener and background refreshes; close our Redis connections."""
        self._bus.stop()
        self._loading.close()
        if self._owns_client:
            self._tier.client.close()
        self._closed = True
        forget(self)

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_NOTHING_TO_FILL: Final = nullcontext(0)
_NO_BARRIER: Final = nullcontext(None)
