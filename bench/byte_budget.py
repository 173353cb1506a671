"""Benchmark 6: does the L1 byte budget bound the memory L1 really holds?

A cache with ``l1_max_bytes`` = 8 MiB receives 100,000 distinct keys with values of
about 200 serialized bytes (``set_many`` in batches: a write fills the writer's L1).
L1 charges each entry what :mod:`tiered_cache.sizing` estimates it holds (decoded value,
keys, bookkeeping); its accounted total must stay within the budget. The real memory is
measured with :mod:`tracemalloc`, traced from just before the first write, in two steps
at the end:

- *tombstones*: the traced memory released by dropping L1's invalidation tombstones,
  which exist only while reads that need them are in flight (none, at the end);
- *entries*: what is released when the cache is then closed and dropped: the entries,
  the values, the local and Redis keys, the LRU order and the reverse index.

Per entry, ``real / charged`` near 1 means the charge tells the truth.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.procs import run_in_processes
from tiered_cache.sizing import COPIER_OVERHEAD, ENTRY_OVERHEAD

from ._report import Section
from ._setup import Context, ready_cache

NAME = "budget"
TITLE = "6. L1 byte budget (8 MiB): accounted vs real memory (tracemalloc)"
BUDGET = 8 * 1024 * 1024
BATCH = 1000
TOLERANCE = 1.10
MIB = 1024 * 1024


def string_value(i: int) -> str:
    """200 characters, 202 bytes of JSON."""
    return f"{i:08d}:" + "x" * 191


def dict_value(i: int) -> dict[str, Any]:
    """A small record of 200 bytes of JSON."""
    return {
        "id": i,
        "name": f"user {i:06d}",
        "email": f"user{i:06d}@example.org",
        "active": True,
        "score": i / 7,
        "roles": ["reader", "writer"],
        "bio": "x" * 56,
    }


VALUES: dict[str, Callable[[int], Any]] = {"str": string_value, "dict": dict_value}


def run(ctx: Context) -> Section:
    """Fill L1 far past its budget for each backend and value kind; compare the bytes."""
    section = Section(NAME, TITLE)
    keys = 30_000 if ctx.settings.quick else 100_000
    backends = ("lru",) if ctx.settings.quick else ("lru", "cachetools")
    variants = [(ctx.redis_url, backend, kind, keys) for backend in backends for kind in VALUES]
    # One fresh process per variant: tracing makes each fill ~6x slower, and they run
    # side by side; a fresh interpreter also keeps earlier benchmarks out of the figures.
    results = run_in_processes(measure_variant, variants, timeout=900)
    _tables(section, results, keys)
    worst = max(result["accounted"] for result in results)
    section.check(
        "accounted L1 bytes <= budget, every variant",
        worst <= BUDGET,
        f"largest {worst:,} <= {BUDGET:,}",
    )
    for result in results:
        if result["backend"] == "lru":  # the default backend; cachetools is in the table
            ratio = result["entries_bytes"] / BUDGET
            label = f"real L1 entry memory / budget (lru/{result['kind']})"
            section.target(label, ratio, TOLERANCE)
    lru_str = results[0]
    ratio = (lru_str["entries_bytes"] + lru_str["tombstone_bytes"]) / BUDGET
    section.target("real L1 memory incl. tombstones / budget (lru/str)", ratio, TOLERANCE)
    residual = max(abs(result["residual_bytes"]) for result in results)
    section.note(
        f"traced memory still held after the cache was dropped: at most {residual / 1024:.0f} KiB "
        "(what the figures above cannot attribute to L1)"
    )
    section.data["runs"] = results
    return section


def _tables(section: Section, results: list[dict[str, Any]], keys: int) -> None:
    rows = []
    for r in results:
        total = r["entries_bytes"] + r["tombstone_bytes"]
        rows.append(
            [
                f"{r['backend']}/{r['kind']}",
                f"{r['items']:,}",
                f"{r['accounted'] / MIB:.2f}",
                f"{r['entries_bytes'] / MIB:.2f}",
                f"{r['entries_bytes'] / BUDGET:.2f}x",
                f"{r['tombstones']:,}",
                f"{r['tombstone_bytes'] / MIB:.2f}",
                f"{total / BUDGET:.2f}x",
            ]
        )
    headers = ["backend/value", "items", "charged MiB", "real MiB", "real/budget"]
    headers += ["tombstones", "tomb MiB", "all/budget"]
    section.table(f"after {keys:,} distinct keys into an 8 MiB L1", headers, rows)
    rows = []
    for r in results:
        items = max(r["items"], 1)
        charged = r["accounted"] / items
        real = r["entries_bytes"] / items
        rows.append(
            [
                f"{r['backend']}/{r['kind']}",
                f"{r['serialized']}",
                f"{charged:.0f}",
                f"{real:.0f}",
                f"{real / charged:.2f}x",
            ]
        )
    headers = ["backend/value", "serialized B", "charged B", "real B", "real/charged"]
    caption = f"per entry (ENTRY_OVERHEAD = {ENTRY_OVERHEAD}, COPIER_OVERHEAD = {COPIER_OVERHEAD})"
    section.table(caption, headers, rows)
    for r in results:
        if r["backend"] == "lru":
            rows = [[site, str(size)] for site, size in r["sites"]]
            caption = f"lru/{r['kind']}: where an entry's bytes were allocated (top sites)"
            section.table(caption, ["allocation site", "B/entry"], rows)


def measure_variant(redis_url: str, backend: str, kind: str, keys: int) -> dict[str, Any]:
    """Fill one cache while tracing allocations; return the counts and traced bytes."""
    cache = ready_cache(
        redis_url,
        prefix=f"bench-budget-{backend}-{kind}",
        l1_backend=backend,
        l1_max_bytes=BUDGET,
        l1_max_items=10 * keys,  # only the byte budget binds
    )
    gc.collect()
    tracemalloc.start()
    try:
        _fill(cache, VALUES[kind], keys)
        l1: Any = cache._l1  # the bench reads (and at the end empties) L1's private state
        result = {"backend": backend, "kind": kind, "items": len(l1), "accounted": l1.nbytes}
        result["serialized"] = len(cache._serializer.dumps(VALUES[kind](0)))
        result["tombstones"] = len(l1._tombs)
        full = _traced()
        with l1._lock:
            l1._tombs.clear()
        without_tombstones = _traced()
        result["sites"] = _sites(len(l1))
        del l1
        cache.close()
        del cache
        empty = _traced()
    finally:
        tracemalloc.stop()
    result["tombstone_bytes"] = full - without_tombstones
    result["entries_bytes"] = without_tombstones - empty
    result["residual_bytes"] = empty
    return result


def _fill(cache: Any, make: Callable[[int], Any], keys: int) -> None:
    """Write every key; a function, so that no batch outlives it (L1 must own the values)."""
    for start in range(0, keys, BATCH):
        cache.set_many(
            {f"item:{i:07d}": make(i) for i in range(start, min(start + BATCH, keys))}, timeout=600
        )


def _sites(items: int, top: int = 8) -> list[tuple[str, int]]:
    """Where the traced bytes still alive were allocated: (file:line, bytes per entry).

    Everything traced and alive here is L1's (the residual note checks that); the
    snapshot is dropped before the next measurement.
    """
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("lineno")[:top]
    del snapshot
    sites = []
    for stat in stats:
        frame = stat.traceback[0]
        where = "/".join(Path(frame.filename).parts[-2:])
        sites.append((f"{where}:{frame.lineno}", round(stat.size / max(items, 1))))
    return sites


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]
