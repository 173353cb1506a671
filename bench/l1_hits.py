"""Benchmark 1: an L1 hit of ``Cache.get`` against in-process caches.

The Cache is connected to a real redis-server and its bus is subscribed, so the hit path
is the production one (it reads the bus's freshness). Every cache holds the same 1,000
keys; one key is read over and over. The string value is handed out as it is; the dict
value is copied on every read (the L1 copy-on-read policy), the others hand out the
cached object itself, so a ``copy.deepcopy`` row shows what a generic copy would cost.
"""

from __future__ import annotations

import copy
import datetime
import functools
from typing import Any

import cachetools
from theine import Cache as Theine

from tiered_cache import Cache

from ._report import Candidate, Section, measure
from ._setup import RECORD as DICT_VALUE
from ._setup import Context, ready_cache

NAME = "l1"
TITLE = "1. L1 hit: Cache.get vs dict / lru_cache / cachetools / theine"
KEYS = [f"user:{n}" for n in range(1000)]
KEY = KEYS[417]
STRING_VALUE = "session 4f1c2a9e, ready"
BASELINE = "cachetools.TTLCache c[k]"
TARGET = 0.6


def run(ctx: Context) -> Section:
    """Measure both value kinds; the target applies to the string value."""
    section = Section(NAME, TITLE)
    with (
        ready_cache(ctx.redis_url, prefix="bench-l1") as lru,
        ready_cache(ctx.redis_url, prefix="bench-l1-ct", l1_backend="cachetools") as ct,
    ):
        ratios = {}
        all_hits = True
        for caption, value in (("string value", STRING_VALUE), ("dict value", DICT_VALUE)):
            candidates = _candidates(lru, ct, value)
            before = [_l2_traffic(lru), _l2_traffic(ct)]
            timings = measure(candidates, ctx.settings)
            all_hits &= [_l2_traffic(lru), _l2_traffic(ct)] == before
            by_label = section.timings(f"{caption}, per get", timings, BASELINE)
            ratios[caption] = by_label["Cache.get (lru L1)"].best_ns / by_label[BASELINE].best_ns
        section.check(
            "every timed Cache.get was an L1 hit",
            all_hits,
            "l2_hits and misses did not move while timing (bus subscribed)",
        )
        section.target(
            "Cache.get string / bare TTLCache lookup (best)", ratios["string value"], TARGET
        )
        section.note(f"dict value, Cache.get / TTLCache (information): {ratios['dict value']:.2f}x")
    return section


def _candidates(lru: Cache, ct: Cache, value: Any) -> list[Candidate]:
    """Every cache filled with the same keys, ``value`` under KEY."""
    values = {key: value if key == KEY else f"value of {key}" for key in KEYS}
    for cache in (lru, ct):
        cache.set_many(values, timeout=3600)
    ttl: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=10_000, ttl=300)
    lru_ct: cachetools.LRUCache[str, Any] = cachetools.LRUCache(maxsize=10_000)
    theine: Theine[str, Any] = Theine(10_000)
    for key, item in values.items():
        ttl[key] = lru_ct[key] = item
        theine.set(key, item, datetime.timedelta(seconds=300))
    plain = dict(values)
    memo = functools.lru_cache(maxsize=10_000)(plain.__getitem__)
    for key in KEYS:
        memo(key)
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("Cache.get (lru L1)", "get(k)", {"get": lru.get}),
        ("Cache.get (cachetools L1)", "get(k)", {"get": ct.get}),
        ("dict d.get(k)", "get(k)", {"get": plain.get}),
        ("functools.lru_cache hit", "f(k)", {"f": memo}),
        (BASELINE, "c[k]", {"c": ttl}),
        ("cachetools.LRUCache c[k]", "c[k]", {"c": lru_ct}),
        ("theine.Cache.get", "get(k)", {"get": theine.get}),
    ]
    if not isinstance(value, str):
        deep = ("TTLCache c[k] + copy.deepcopy", "deepcopy(c[k])")
        rows.append((*deep, {"c": ttl, "deepcopy": copy.deepcopy}))
    return [Candidate(label, stmt, {**namespace, "k": KEY}) for label, stmt, namespace in rows]


def _l2_traffic(cache: Cache) -> tuple[int, int]:
    stats = cache.stats()
    return stats["l2_hits"], stats["misses"]
