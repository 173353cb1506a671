"""Benchmark 5: single-flight wake-up, 32 waiters in 4 processes x 8 threads.

In each round every thread of every process calls ``get_or_set`` on the same cold key
at once; the loader sleeps 200 ms. One thread of one process runs it; its process's
other threads wait in-process, the other processes' leaders wait for the bus to
announce the value and then read it. The winning call returns right after its pipelined
write (SET + PUBLISH + lock release), so its return stamp is when the value was stored;
every other caller's lag is its own return stamp minus that one. Two more references:
when a plain redis-py subscriber in the (idle) parent process received the bus message
that announced the value (the SET and the PUBLISH run back to back in Redis), and when
the loader finished (carried in the value; this one includes the write round trip).
Stamps are ``time.monotonic()`` (system-wide ``CLOCK_MONOTONIC`` on Linux).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.procs import GroupSync, ProcessGroup

from ._report import Section, percentile
from ._setup import Context, RawSubscriber, ready_cache

NAME = "singleflight"
TITLE = "5. single-flight: 4 processes x 8 threads wait for one 200 ms loader"
PREFIX = "bench-sf"
CHANNEL = f"{PREFIX}:1:#bus"
PROCESSES = 4
THREADS = 8
LOAD_SECONDS = 0.2
TARGET_MEDIAN_MS = 5.0


def run(ctx: Context) -> Section:
    """Run the rounds and report the waiters' lags and the loader calls."""
    section = Section(NAME, TITLE)
    rounds = 3 if ctx.settings.quick else 8
    args = [(ctx.redis_url, rounds)] * PROCESSES
    with RawSubscriber(ctx.redis_url, CHANNEL) as raw, ProcessGroup(worker, args) as group:
        group.wait_ready(60)
        results = group.join(60 + rounds * 10)
    lags: dict[str, list[float]] = {"same process": [], "other processes": []}
    from_finish: list[float] = []
    from_announced: list[float] = []
    loaders_per_round, returned = [], []
    for r in range(rounds):
        announced = [at for at, data in raw.arrivals if _key(r).encode() in data]
        calls = [(p, call) for p, (per_round, _) in enumerate(results) for call in per_round[r]]
        returned.append(len(calls))
        winners = [(p, call) for p, call in calls if call["ran_loader"]]
        loaders_per_round.append(len(winners))
        if len(winners) != 1:
            continue
        home, winner = winners[0]
        for p, call in calls:
            if call is not winner:
                group_name = "same process" if p == home else "other processes"
                lags[group_name].append((call["returned"] - winner["returned"]) * 1000)
                from_finish.append((call["returned"] - call["finished"]) * 1000)
                if announced:
                    from_announced.append((call["returned"] - announced[0]) * 1000)
    every = lags["same process"] + lags["other processes"]
    rows = [_row(f"{name} as the loader", values) for name, values in lags.items()] + [
        _row("all waiters", every),
        _row("all waiters, from announcement seen", from_announced),
        _row("all waiters, from loader finish", from_finish),
    ]
    headers = ["waiters", "n", "median ms", "p90 ms", "p99 ms", "max ms", "min ms"]
    section.table(
        f"lag from the value being stored to each waiter returning, {rounds} rounds", headers, rows
    )
    section.check(
        "every caller got the value",
        all(n == PROCESSES * THREADS for n in returned),
        f"callers that returned per round: {sorted(set(returned))} of {PROCESSES * THREADS}",
    )
    total_loader_calls = sum(stats_calls for _, stats_calls in results)
    section.check(
        "one loader call per round",
        all(n == 1 for n in loaders_per_round) and total_loader_calls == rounds,
        f"loader calls per round {loaders_per_round}; stats loader_calls summed over "
        f"processes = {total_loader_calls} for {rounds} rounds",
    )
    section.target(
        "median waiter lag after the store", percentile(every, 50), TARGET_MEDIAN_MS, " ms"
    )
    section.note(f"p99 waiter lag after the store: {percentile(every, 99):.2f} ms")
    section.data["lags_ms"] = lags
    return section


def _key(round_number: int) -> str:
    """Fixed width, so that no round's key is a prefix of another's."""
    return f"cold:{round_number:04d}"


def _row(label: str, values: list[float]) -> list[str]:
    figures = [percentile(values, q) for q in (50, 90, 99, 100, 0)]
    return [label, str(len(values)), *(f"{f:.3f}" for f in figures)]


def worker(sync: GroupSync, redis_url: str, rounds: int) -> tuple[list[list[dict[str, Any]]], int]:
    """One process: ``rounds`` rounds of THREADS concurrent get_or_set calls."""
    with ready_cache(redis_url, prefix=PREFIX) as cache:
        sync.signal_ready()
        per_round = [_round(sync, cache, _key(r)) for r in range(rounds)]
        return per_round, cache.stats()["loader_calls"]


def _round(sync: GroupSync, cache: Any, key: str) -> list[dict[str, Any]]:
    go = threading.Event()
    loaded_by: list[int] = []
    calls: list[dict[str, Any]] = []

    def loader() -> dict[str, float]:
        time.sleep(LOAD_SECONDS)
        loaded_by.append(threading.get_ident())
        return {"finished": time.monotonic()}

    def call() -> None:
        go.wait()
        value = cache.get_or_set(key, loader, timeout=3600)
        returned = time.monotonic()
        calls.append({"ident": threading.get_ident(), "returned": returned, **value})

    threads = [threading.Thread(target=call) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    sync.barrier.wait(60)
    go.set()
    for thread in threads:
        thread.join(60)
    for entry in calls:
        entry["ran_loader"] = entry.pop("ident") in loaded_by
    return calls
