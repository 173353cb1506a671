"""Small helpers shared by the benchmarks: caches that are ready to serve L1 hits."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import redis

from tiered_cache import Cache

from ._report import Settings

__all__ = ["RECORD", "Context", "RawSubscriber", "ready_cache", "wait_for_bus"]

#: The dict value the micro-benchmarks cache (a small JSON record).
RECORD: dict[str, Any] = {
    "id": 4217,
    "name": "Ada Lovelace",
    "email": "ada@example.org",
    "active": True,
    "score": 9.5,
    "roles": ["admin", "editor"],
}


def wait_for_bus(cache: Cache, timeout: float = 10.0) -> None:
    """Block until the cache's invalidation listener is subscribed (it starts lazily).

    Until then L1 entries are only served for ``l1_disconnected_ttl``, so a benchmark of
    L1 hits must not start before.
    """
    cache.get("bench:wake-the-bus")  # the first Redis use starts the listener
    deadline = time.monotonic() + timeout
    while not cache.stats()["bus_connected"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bus of {cache!r} did not connect within {timeout} s")
        time.sleep(0.01)


def ready_cache(redis_url: str, **settings: Any) -> Cache:
    """A cache on ``redis_url`` whose bus is connected."""
    cache = Cache(redis_url=redis_url, **settings)
    wait_for_bus(cache)
    return cache


@dataclasses.dataclass(frozen=True)
class Context:
    """What every benchmark gets: the URL of the run's own redis-server and the timings."""

    redis_url: str
    settings: Settings


class RawSubscriber:
    """A plain redis-py subscriber on a channel: ``arrivals`` holds (monotonic time, data).

    It runs in a thread of the benchmark's parent process, which is otherwise idle, so
    its stamps are the floor of what any subscriber can see.
    """

    def __init__(self, redis_url: str, channel: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="bench-raw-sub", daemon=True)
        self.arrivals: list[tuple[float, bytes]] = []

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                self.arrivals.append((time.monotonic(), message["data"]))

    def __enter__(self) -> RawSubscriber:
        self._pubsub.get_message(timeout=1.0)  # the subscription confirmation
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()
