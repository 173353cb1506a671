"""Waiting for what another thread, process or the bus does: poll with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tiered_cache import Cache


def until(predicate: Callable[[], Any], timeout: float = 3.0, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; return its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def warm(cache: Cache) -> None:
    """Start the cache's listener and wait for its subscription."""
    cache.get("__warm__")
    assert until(lambda: cache.stats()["bus_connected"], 5.0), "bus never connected"
