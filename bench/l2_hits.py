"""Benchmark 3: an L2 hit of ``Cache.get`` against a raw redis-py ``GET`` of the same bytes.

L1 is made useless (``l1_max_items=0``), so every ``Cache.get`` reads Redis, decodes
the frame and the payload, and hands out a private copy. The raw client is a plain
``redis.Redis`` with the same options as the Cache's own (short timeouts, no retries),
on the same server, reading the same key; both use the same parser: hiredis when it is
installed. The run is repeated in a child process where hiredis cannot be imported, so
redis-py falls back to its pure-Python parser and packer (``bench._nohiredis``).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
import redis.utils
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._report import Candidate, Section, Settings, Timing, measure
from ._setup import RECORD as DICT_VALUE
from ._setup import Context, ready_cache

NAME = "l2"
TITLE = "3. L2 hit (L1 off) vs raw redis-py GET of the same bytes"
TARGET = 1.3
SOCKET_TIMEOUT = 0.25  # the Cache's default, used for both clients
STRING_VALUE = "x" * 64
REPO_ROOT = Path(__file__).resolve().parents[1]


def run(ctx: Context) -> Section:
    """Measure with this process's parser, then without hiredis in a child process."""
    section = Section(NAME, TITLE)
    results = [measure_l2(ctx.redis_url, ctx.settings)]
    if results[0]["hiredis"]:
        child = _without_hiredis(ctx, section)
        if child is not None:
            results.append(child)
    else:
        section.note("hiredis is not installed: only the pure-Python parser was measured")
    rows = []
    for result in results:
        timings = {label: Timing(**t) for label, t in result["timings"].items()}
        for value in ("string", "dict"):
            cache, raw = timings[f"Cache.get {value}"], timings[f"raw GET {value}"]
            ratio = cache.best_ns / raw.best_ns
            rows.append(
                [
                    f"{result['parser']}, {value} value",
                    f"{cache.best_ns / 1000:.1f}",
                    f"{raw.best_ns / 1000:.1f}",
                    f"{ratio:.2f}x",
                    f"{cache.median_ns / raw.median_ns:.2f}x",
                    f"{(cache.best_ns - raw.best_ns) / 1000:.1f}",
                ]
            )
            result.setdefault("ratios", {})[value] = ratio
    headers = ["parser, value", "Cache.get us", "raw GET us", "ratio(best)"]
    headers += ["ratio(median)", "overhead us"]
    section.table("per read, best of the interleaved repetitions", headers, rows)
    section.data["runs"] = results
    for result in results:
        if not result["all_l2_hits"]:
            section.check(f"{result['parser']}: every Cache.get was an L2 hit", False, "not so")
    for result in results:
        label = f"Cache.get L2 hit / raw GET, {result['parser']}, string (best)"
        section.target(label, result["ratios"]["string"], TARGET)
    return section


def measure_l2(redis_url: str, settings: Settings) -> dict[str, Any]:
    """Time both reads of both values with whatever parser this process's redis-py uses."""
    raw = redis.Redis.from_url(
        redis_url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    with raw, ready_cache(redis_url, prefix="bench-l2", l1_max_items=0) as cache:
        candidates = []
        for value_name, value in (("string", STRING_VALUE), ("dict", DICT_VALUE)):
            key = f"l2:{value_name}"
            cache.set(key, value, timeout=3600)
            gkey = cache._layout.data("", 0, key)
            candidates += [
                Candidate(f"Cache.get {value_name}", "get(k)", {"get": cache.get, "k": key}),
                Candidate(f"raw GET {value_name}", "get(k)", {"get": raw.get, "k": gkey}),
            ]
        before = cache.stats()
        timings = measure(candidates, settings)
        after = cache.stats()
    return {
        "parser": redis.connection.DefaultParser.__name__,
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
        "timings": {t.label: dataclasses.asdict(t) for t in timings},
        "all_l2_hits": after["l1_hits"] == before["l1_hits"]
        and after["misses"] == before["misses"],
    }


def _without_hiredis(ctx: Context, section: Section) -> dict[str, Any] | None:
    """Run :func:`measure_l2` in a child process that cannot import hiredis."""
    command = [sys.executable, "-m", "bench._nohiredis", ctx.redis_url]
    command.append(json.dumps(dataclasses.asdict(ctx.settings)))
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        section.note(f"the run without hiredis failed:\n{done.stderr.strip()}")
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["hiredis"]:
        section.note("hiding hiredis from the child did not work; its figures are dropped")
        return None
    return result
