"""The L1 hit path: what ``cache.get`` costs when this process already holds the value.

A closure over one process's L1, clock and bus: a hit is one ``dict`` lookup, one clock
read and one ``move_to_end``, with no lock, no bound-method creation and no key
formatting (local keys are the user's key, or a tuple for namespaced and memoized
entries; the Redis key is only built on a miss). The cache builds its readers again
after a fork, over the child's L1 and bus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .bus import Bus, NoBus
from .l1 import L1Store


class L1Reader(Protocol):
    """The L1 hit path: the value of ``key``, or what the miss handler returns.

    Its parameters are named as :meth:`Keyspace.get`'s, whose place it takes as
    ``Cache.get``: ``get(key="k", default=0)`` works as the method does.
    """

    def __call__(self, key: Any, default: Any = None) -> Any: ...


def make_reader(
    l1: L1Store,
    bus: Bus | NoBus,
    timer: Callable[[], float],
    disconnected_ttl: float,
    miss: Callable[[Any, Any], Any],
) -> tuple[L1Reader, Callable[[], int]]:
    """Build ``read(key, default)``, which calls ``miss(key, default)`` on a miss.

    An entry is served while it is younger than its expiry (``l1_ttl`` or the value's own
    freshness) and either the bus vouches for this process (:attr:`Bus.fresh_until`) or
    the entry is younger than ``disconnected_ttl``.

    :returns: the reader, and a function returning how many hits it has served.
    """
    peek, touch = l1.peek, l1.touch
    hits = 0  # a closure cell, cheaper than an attribute of the cache on every hit

    def read(key: Any, default: Any = None) -> Any:
        nonlocal hits
        entry = peek(key)
        if entry is not None:
            now = timer()
            if entry.expires > now and (
                now < bus.fresh_until or entry.stored > now - disconnected_ttl
            ):
                try:  # noqa: SIM105 - not contextlib.suppress: this is the hot path
                    touch(key)
                except KeyError:  # evicted by another thread since the lookup
                    pass
                hits += 1
                copy = entry.copy
                return entry.value if copy is None else copy(entry.value)
        return miss(key, default)

    return read, lambda: hits
