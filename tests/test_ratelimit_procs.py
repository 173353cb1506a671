"""The race: four real processes, fifteen requests each, one client, ``20/minute``."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.procs import GroupSync, ProcessGroup
from tiered_cache.flask_ext import TieredCache
from tiered_cache.ratelimit import STRATEGIES

PROCESSES = 4
REQUESTS = 15


def search() -> str:
    return "results"


def hammer(sync: GroupSync, url: str, strategy: str) -> list[tuple[int, str | None]]:
    """One worker: its own app and cache; 15 requests once every worker is ready."""
    app = Flask(f"worker{sync.index}")
    app.config.update(TIERED_CACHE_REDIS_URL=url, TIERED_CACHE_INVALIDATION=False)
    tc = TieredCache(app)
    app.add_url_rule("/search", "search", tc.limit("20/minute", strategy=strategy)(search))
    client = app.test_client()
    sync.barrier.wait(30)
    seen = []
    for _ in range(REQUESTS):
        response = client.get("/search")
        header = "X-RateLimit-Remaining" if response.status_code == 200 else "Retry-After"
        seen.append((response.status_code, response.headers.get(header)))
    app.extensions["tiered_cache"].cache.close()
    return seen


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_four_processes_admit_exactly_twenty(redis_url: str, strategy: str) -> None:
    with ProcessGroup(hammer, [(redis_url, strategy)] * PROCESSES) as group:
        results = group.join(90)
    answers = [answer for worker in results for answer in worker]
    admitted = [int(value or -1) for status, value in answers if status == 200]
    refused = [int(value or -1) for status, value in answers if status == 429]
    assert len(answers) == PROCESSES * REQUESTS
    assert len(admitted) == 20 and len(refused) == 40
    # each admission saw its own count: the figures come from the same atomic step
    assert sorted(admitted) == list(range(20))
    assert all(1 <= retry <= 120 for retry in refused)
