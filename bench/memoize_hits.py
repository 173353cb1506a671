"""Benchmark 2: a ``@cache.memoize`` hit against ``cachetools.cached`` on the same function.

Both decorate the same trivial function and are called with the same arguments,
``f(1, 2)``, after a first call stored the result; every timed call is a hit.
``functools.lru_cache`` is there as the floor of what a Python-level memoizer costs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cachetools

from ._report import Candidate, Section, measure
from ._setup import Context, ready_cache

NAME = "memoize"
TITLE = "2. memoize hit vs cachetools.cached(TTLCache) hit, f(1, 2)"
BASELINE = "cachetools.cached(TTLCache)"
TARGET = 0.8


def add(a: int, b: int) -> int:
    """The memoized function: trivial, so the timings are the memoizers' own cost."""
    return a + b


def run(ctx: Context) -> Section:
    """Time hits of each memoizer on ``f(1, 2)``."""
    section = Section(NAME, TITLE)
    with ready_cache(ctx.redis_url, prefix="bench-memo") as cache:
        memoized = cache.memoize(timeout=3600)(add)
        ttl_cached = cachetools.cached(cachetools.TTLCache(maxsize=10_000, ttl=300))(add)
        lru_cached = cachetools.cached(cachetools.LRUCache(maxsize=10_000))(add)
        functools_cached = functools.lru_cache(maxsize=10_000)(add)
        rows: list[tuple[str, Callable[[int, int], int]]] = [
            ("cache.memoize", memoized),
            (BASELINE, ttl_cached),
            ("cachetools.cached(LRUCache)", lru_cached),
            ("functools.lru_cache", functools_cached),
        ]
        for _, fn in rows:
            fn(1, 2)
        before = cache.stats()
        timings = measure(
            [Candidate(label, "f(1, 2)", {"f": fn}) for label, fn in rows], ctx.settings
        )
        after = cache.stats()
        by_label = section.timings("per call of f(1, 2)", timings, BASELINE)
        section.check(
            "every timed memoize call was an L1 hit",
            (after["l2_hits"], after["misses"], after["loader_calls"])
            == (before["l2_hits"], before["misses"], before["loader_calls"]),
            "l2_hits, misses and loader_calls did not move while timing",
        )
        ratio = by_label["cache.memoize"].best_ns / by_label[BASELINE].best_ns
        section.target("memoize / cachetools.cached(TTLCache) hit (best)", ratio, TARGET)
    return section
