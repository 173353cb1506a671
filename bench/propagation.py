"""Benchmark 4: how soon other processes see a write (invalidation propagation).

Four processes share one redis-server: a writer sets one key ``writes`` times, a small
gap apart, and stamps the moment each ``set()`` returned; three readers poll
``cache.get(key)`` (an L1 hit until the bus evicts their copy, then a Redis read of the
new value) and stamp the first moment they saw each new value. The lag a user sees is
``seen - set() returned``; it can be slightly negative, since the bus message travels
in the same round trip as the write. All processes stamp with ``time.monotonic()``,
which on Linux is the system-wide ``CLOCK_MONOTONIC``.

Readers sleep ``poll`` seconds between gets, as a busy server worker does I/O between
requests: a reader spinning on the GIL would delay its own bus listener thread by up to
the interpreter's switch interval (5 ms). The poll interval is part of the figures.

As a floor, the parent process listens on the bus channel with a plain redis-py
subscriber and stamps each message's arrival.
"""

from __future__ import annotations

import time
from typing import Any

from tests.procs import GroupSync, ProcessGroup

from ._report import Section, percentile
from ._setup import Context, RawSubscriber, ready_cache

NAME = "propagation"
TITLE = "4. invalidation propagation: 1 writer + 3 reader processes"
PREFIX = "bench-prop"
KEY = "hot"
READERS = 3
GAP = 0.002
POLL = 0.0001
TARGET_P99_MS = 5.0


def run(ctx: Context) -> Section:
    """Run the writer and readers; compare what readers saw with the raw pub/sub floor."""
    section = Section(NAME, TITLE)
    writes = 200 if ctx.settings.quick else 500
    channel = f"{PREFIX}:1:#bus"
    args = [("writer", ctx.redis_url, writes)] + [("reader", ctx.redis_url, writes)] * READERS
    with RawSubscriber(ctx.redis_url, channel) as raw, ProcessGroup(worker, args) as group:
        group.wait_ready(60)
        results = group.join(120 + writes * GAP * 10)
    stamps: list[tuple[float, float]] = results[0]
    # The last `writes` messages are the timed writes (the writer's first set precedes them).
    arrivals = raw.arrivals[-writes:]
    rows, lags_all, from_call = [], [], []
    for n, (seen, _) in enumerate(results[1:], start=1):
        lags = [(seen[i] - stamps[i][1]) * 1000 for i in range(writes) if i in seen]
        from_call += [(seen[i] - stamps[i][0]) * 1000 for i in range(writes) if i in seen]
        lags_all += lags
        rows.append(_row(f"reader {n} (Cache.get)", lags, writes))
    rows.append(_row("all readers", lags_all, writes * READERS))
    raw_lags = [(at - stamps[i][1]) * 1000 for i, (at, _) in enumerate(arrivals)]
    rows.append(_row("raw redis-py subscriber (floor)", raw_lags, writes))
    rows.append(_row("all readers, from set() called", from_call, writes * READERS))
    headers = ["observer", "seen", "missed", "p50 ms", "p90 ms", "p99 ms", "max ms", "min ms"]
    section.table(f"lag from set() returning to the new value seen, {writes} writes", headers, rows)
    durations = [(end - start) * 1000 for start, end in stamps]
    section.note(
        f"writer set() round trip: p50 {percentile(durations, 50):.3f} ms, "
        f"p99 {percentile(durations, 99):.3f} ms; gap {GAP * 1000:g} ms; "
        f"reader poll interval {POLL * 1e6:g} us (+ sleep overshoot)"
    )
    section.note(
        "'missed' = values a reader never saw because the next write landed first; "
        "invalidations_received per reader: "
        + ", ".join(str(stats["invalidations_received"]) for _, stats in results[1:])
    )
    p99 = percentile(lags_all, 99)
    floor = percentile(raw_lags, 99)
    if floor > 0:
        section.note(f"p99 of all readers / p99 of the raw subscriber = {p99 / floor:.2f}x")
    section.target("p99 lag until a reader sees the new value", p99, TARGET_P99_MS, " ms")
    section.data["lags_ms"] = {"readers": lags_all, "raw": raw_lags}
    return section


def _row(label: str, lags: list[float], expected: int) -> list[str]:
    figures = [percentile(lags, q) for q in (50, 90, 99, 100, 0)]
    return [label, str(len(lags)), str(expected - len(lags)), *(f"{f:.3f}" for f in figures)]


def worker(sync: GroupSync, role: str, redis_url: str, writes: int) -> Any:
    """One process: the writer (index 0) or a reader."""
    with ready_cache(redis_url, prefix=PREFIX) as cache:
        if role == "writer":
            cache.set(KEY, -1, timeout=3600)
        sync.signal_ready()
        sync.barrier.wait(60)
        if role == "writer":
            time.sleep(0.2)  # the readers settle on L1 hits of the first value
            return _write(cache, writes)
        return _read(cache, writes), cache.stats()


def _write(cache: Any, writes: int) -> list[tuple[float, float]]:
    stamps = []
    for i in range(writes):
        start = time.monotonic()
        cache.set(KEY, i, timeout=3600)
        end = time.monotonic()
        stamps.append((start, end))
        time.sleep(max(end + GAP - time.monotonic(), 0))
    return stamps


def _read(cache: Any, writes: int) -> dict[int, float]:
    """Poll until the last value is seen; return when each value was first seen."""
    seen: dict[int, float] = {}
    last = None
    deadline = time.monotonic() + 30 + writes * GAP * 5
    while True:
        value = cache.get(KEY)
        now = time.monotonic()
        if value != last:
            seen.setdefault(value, now)
            last = value
        if value == writes - 1 or now > deadline:
            return seen
        time.sleep(POLL)
