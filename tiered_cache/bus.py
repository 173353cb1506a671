"""The invalidation bus: Redis pub/sub messages and the supervised listener thread.

Every write, delete, namespace bump and clear is published on one channel per prefix
and schema version. Each process (each :class:`~tiered_cache.Cache`) listens on its own
connection, ignores its own messages and drops the local copies the others changed.

Liveness. The listener pings the server through its subscription every
``disconnected_ttl / 4`` seconds. A PONG proves that every message published before the
PING was sent has been delivered (one connection delivers in order), so
:attr:`Bus.fresh_until` = ping sent + ``disconnected_ttl`` bounds how old an L1 entry may
be when the bus cannot vouch for it. A missing PONG, a socket error, or any exception
ends the session; the listener reconnects with capped, jittered backoff, and after every
(re)subscription it flushes the process's L1 and namespace versions, because messages
may have been missed in between.

Barriers. A process that reads a namespace's version from Redis may get there before its
listener has handed over a message published earlier (a write of a key the namespace's
pages are built from, say): built then from the L1 copy that message drops, a page would
be stored under the new version and outlive the invalidation. :meth:`Bus.barrier` makes
such a read wait: the read's pipeline also publishes a mark on this process's own
channel, which the listener hears only after every message published before it (Redis
queues a PUBLISH's deliveries as it runs it, and one connection delivers in order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff

from ._log import RateLimitedLog
from .redis_tier import Client

Reset = tuple[str | None, str | None]
"""A rate limit reset: the client's hash tag and the scope's key part; None matches any."""


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One bus message; a single call's changes travel together in one message."""

    sender: str
    keys: tuple[str, ...] = ()
    """Data keys written or deleted: drop local copies, wake single-flight waiters."""
    namespaces: tuple[str, ...] = ()
    """Namespaces bumped: forget their cached versions."""
    flush: bool = False
    """Everything under the prefix was cleared."""
    aborted: tuple[str, ...] = ()
    """Data keys whose loader failed: wake waiters so one of them takes over."""
    resets: tuple[Reset, ...] = ()
    """Rate limits reset: drop the refusals they cover from local deny caches."""

    def encode(self) -> bytes:
        """Return the wire form (compact JSON)."""
        body: dict[str, Any] = {"s": self.sender}
        if self.keys:
            body["k"] = self.keys
        if self.namespaces:
            body["n"] = self.namespaces
        if self.flush:
            body["f"] = 1
        if self.aborted:
            body["a"] = self.aborted
        if self.resets:
            body["r"] = self.resets
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Message:
        """Parse the wire form.

        :raises ValueError: when ``data`` is not a message of ours.
        """
        body = json.loads(data)
        if not isinstance(body, dict) or not isinstance(body.get("s"), str):
            raise ValueError("not a tiered_cache bus message")
        return cls(
            sender=body["s"],
            keys=tuple(str(k) for k in body.get("k", ())),
            namespaces=tuple(str(n) for n in body.get("n", ())),
            flush=bool(body.get("f")),
            aborted=tuple(str(k) for k in body.get("a", ())),
            resets=tuple(_reset(r) for r in body.get("r", ())),
        )


def _reset(item: Any) -> Reset:
    """One ``(client tag, scope part)`` pair off the wire (None: any)."""
    if not isinstance(item, list) or len(item) != 2:
        raise ValueError(f"not a rate limit reset: {item!r}")
    tag, part = item
    if not all(x is None or isinstance(x, str) for x in (tag, part)):
        raise ValueError(f"not a rate limit reset: {item!r}")
    return tag, part


class BusDown(Exception):
    """The subscription stopped answering."""


class _Mark:
    """One mark published: heard by the listener, or never to be."""

    __slots__ = ("heard", "passed")

    def __init__(self) -> None:
        self.heard = threading.Event()
        self.passed = False

    def end(self, passed: bool) -> None:
        """The listener heard it (True), or will never hear it (False)."""
        self.passed = passed
        self.heard.set()


class Barrier:
    """A mark put in the bus's stream right after a read (see :meth:`Bus.barrier`)."""

    __slots__ = ("_bus", "_mark", "token")

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.token = b""
        self._mark: _Mark | None = None

    def publish(self, target: Any) -> None:
        """Queue a mark on ``target``, a pipeline after the read (or a client, sent now).
        Published again, after a second read, it waits for the latest mark: each mark
        is heard on its own, and an earlier one says nothing of a later read."""
        self._bus._mark(self)
        target.publish(self._bus._own_channel, self.token)

    def passed(self, timeout: float) -> bool:
        """Wait until the listener has handed over every message published before the
        latest mark; False when it has not within ``timeout``, or cannot (no
        subscription up, or it ended)."""
        return self._bus._passed(self._mark, timeout)


class Bus:
    """The listener of one cache in one process.

    :param client: the Redis client to subscribe with (a connection of its own is used).
    :param channel: the channel name.
    :param sender: this process's id; messages from it are ignored.
    :param on_message: called in the listener thread for every foreign message.
    :param on_subscribed: called after every successful (re)subscription, before the bus
        vouches for anything: the cache flushes its local state there.
    :param on_lost: called in the listener thread when a subscription that was made ends
        (no announcement comes until the next one).
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        *,
        sender: str,
        on_message: Callable[[Message], None],
        on_subscribed: Callable[[], None],
        on_lost: Callable[[], None] = lambda: None,
        disconnected_ttl: float,
        socket_timeout: float,
        log: RateLimitedLog,
        timer: Callable[[], float] = time.monotonic,
        backoff: AbstractBackoff | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self.sender = sender
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._ttl = disconnected_ttl
        self._ping_every = min(max(disconnected_ttl / 4, 0.02), 1.0)
        self._pong_timeout = max(4 * socket_timeout, disconnected_ttl, 0.5)
        self._socket_timeout = socket_timeout
        self._log = log
        self._timer = timer
        self._backoff = backoff or ExponentialWithJitterBackoff(base=0.05, cap=2.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconnected_underneath = False
        self._watched: Any = None
        self._first_subscription = threading.Event()
        self._own_channel = f"{channel}:{sender}"
        self._own_channel_bytes = self._own_channel.encode()  # as replies name it
        self._marks: dict[bytes, _Mark] = {}  # by token: those not heard yet
        self._behind = False  # a barrier went unheard, and no mark has been heard since
        self.fresh_until = 0.0
        self.connected = False
        self.sessions = 0
        self.received = 0
        self.errors = 0

    @property
    def reconnects(self) -> int:
        """Subscriptions made after the first one."""
        return max(self.sessions - 1, 0)

    @property
    def started(self) -> bool:
        """True once :meth:`start` ran in this process."""
        return self._thread is not None

    def start(self, wait: float = 0.0) -> None:
        """Start the listener thread (daemon; stopped by :meth:`stop`).

        :param wait: seconds to wait for the first subscription, so that its flush of
            local state happens before the caller fills L1, not after.
        """
        self._thread = threading.Thread(
            target=self._supervise, name="tiered_cache-bus", daemon=True
        )
        self._thread.start()
        self._first_subscription.wait(wait)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.connected = False
        self.fresh_until = 0.0

    @contextlib.contextmanager
    def barrier(self) -> Iterator[Barrier | None]:
        """A mark for a read to publish after itself, then wait for (see the module's
        docstring). None before the listener starts, when this process's L1 holds
        nothing yet (every fill starts it first), after it stopped (a closed cache,
        whose versions live by ``disconnected_ttl``), and in the listener itself, which
        cannot wait for what it is to hand over. While it is not subscribed, the
        barrier never passes: a version read then may be newer than messages missed."""
        if (
            self._thread is None
            or self._stop.is_set()
            or threading.current_thread() is self._thread
        ):
            yield None
            return
        barrier = Barrier(self)
        try:
            yield barrier
        finally:
            self._marks.pop(barrier.token, None)

    def _mark(self, barrier: Barrier) -> None:
        """Give ``barrier`` a new token, and a new mark for the listener to end."""
        self._marks.pop(barrier.token, None)
        barrier.token = uuid.uuid4().hex.encode()
        barrier._mark = self._marks[barrier.token] = _Mark()

    def _passed(self, mark: _Mark | None, timeout: float) -> bool:
        """:meth:`Barrier.passed`; without waiting while not subscribed, or while an
        earlier mark went unheard (a listener that far behind would cost every read the
        whole ``timeout``) until the listener hears one again."""
        if mark is None:
            return False
        if mark.heard.is_set() or not self.connected:
            return mark.passed
        passed = mark.heard.wait(0.0 if self._behind else timeout) and mark.passed
        if not passed:
            self._behind = True
        return passed

    def _supervise(self) -> None:
        """Run sessions until stopped; any exception is logged and followed by a reconnect."""
        failures = 0
        while not self._stop.is_set():
            sessions = self.sessions
            try:
                self._session()
            except Exception as exc:  # supervised thread: log, count, reconnect
                self.errors += 1
                self._log.warning("bus", "invalidation bus lost (%s); reconnecting", exc)
            self.connected = False
            # Back off only across attempts that never subscribed: a bus that ran for a
            # while and dropped retries at once.
            failures = 1 if self.sessions > sessions else failures + 1
            self._stop.wait(self._backoff.compute(failures))

    def _session(self) -> None:
        """One subscription, from connect to failure."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=False)
        self._watched = None
        try:
            subscribed_at = self._subscribe(pubsub)
            self._behind = False  # the marks of the last session will never come
            self._on_subscribed()
            self._first_subscription.set()
            self.sessions += 1
            self.connected = True
            self.fresh_until = subscribed_at + self._ttl
            self._listen(pubsub)
        finally:
            self.fresh_until = 0.0
            was_connected, self.connected = self.connected, False
            if self._watched is not None:  # the connection goes back to a shared pool
                self._watched.deregister_connect_callback(self._on_connect)
                self._watched = None
            pubsub.close()
            for mark in list(self._marks.values()):  # never heard now
                mark.end(passed=False)
            if was_connected:
                self._on_lost()

    def _subscribe(self, pubsub: Any) -> float:
        """Subscribe and wait for the confirmation; return when the request was sent."""
        self._reconnected_underneath = False
        sent = self._timer()
        pubsub.subscribe(self._channel, self._own_channel)
        connection = getattr(pubsub, "connection", None)
        if connection is not None:
            # A client whose own retry policy reconnects inside redis-py would resubscribe
            # silently and hide lost messages; hear about every connect of this session's.
            connection.register_connect_callback(self._on_connect)
            self._watched = connection
        deadline = sent + max(self._pong_timeout, self._socket_timeout)
        while self._timer() < deadline:
            message = pubsub.get_message(timeout=self._socket_timeout)
            if message is not None and message["type"] == "subscribe" and message["data"] == 2:
                return sent  # the count of channels subscribed: both are
        raise BusDown("no subscription confirmation")

    def _on_connect(self, connection: Any) -> None:
        if connection is self._watched:
            self._reconnected_underneath = True

    def _listen(self, pubsub: Any) -> None:
        """Deliver messages and keep the liveness proof current until something fails."""
        ping_sent: float | None = None
        next_ping = self._timer() + self._ping_every
        while not self._stop.is_set():
            now = self._timer()
            if ping_sent is None and now >= next_ping:
                ping_sent = now
                pubsub.ping()
            elif ping_sent is not None and now - ping_sent > self._pong_timeout:
                raise BusDown(f"no PONG within {self._pong_timeout:.2f}s")
            wait = self._ping_every if ping_sent is not None else max(next_ping - now, 0.0)
            message = pubsub.get_message(timeout=wait)
            if self._reconnected_underneath:
                raise BusDown("the connection was re-established underneath")
            if message is None:
                continue
            if message["type"] == "pong" and ping_sent is not None:
                self.fresh_until = ping_sent + self._ttl
                next_ping = ping_sent + self._ping_every
                ping_sent = None
            elif message["type"] == "message":
                if message["channel"] == self._own_channel_bytes:
                    self._behind = False  # caught up with the mark, if late
                    mark = self._marks.get(message["data"])
                    if mark is not None:
                        mark.end(passed=True)
                else:
                    self._deliver(message["data"])

    def _deliver(self, data: bytes) -> None:
        """Decode one message and hand it over unless it is our own."""
        try:
            message = Message.decode(data)
        # RecursionError: nesting json cannot follow. Raised on, it would end the session,
        # and every reconnection flushes L1.
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            self._log.warning("bus-message", "ignoring a foreign bus message: %s", exc)
            return
        if message.sender != self.sender:
            self.received += 1
            self._on_message(message)


class NoBus:
    """Stands in for the bus when invalidation is off: L1 lives by ``l1_ttl`` alone."""

    fresh_until = math.inf
    started = True
    connected = False
    reconnects = 0
    received = 0

    def start(self, wait: float = 0.0) -> None:
        """Nothing to start."""

    @contextlib.contextmanager
    def barrier(self) -> Iterator[Barrier | None]:
        """No bus, nothing to wait for."""
        yield None

    def stop(self, timeout: float = 0.0) -> None:
        """Nothing to stop."""
