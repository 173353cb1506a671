"""Shared fixtures: real ``redis-server`` processes (see ``tests/redis_harness.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.redis_cluster import RedisClusterServers
from tests.redis_harness import RedisServer
from tiered_cache import Cache


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A server of the test's own, which it may kill, pause or restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One server for the whole session; tests must not kill, pause or restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(shared_redis: RedisServer) -> str:
    """The URL of the shared server, emptied before the test."""
    if shared_redis.paused:
        shared_redis.resume()
    if not shared_redis.is_running:
        shared_redis.start()
    shared_redis.flushall()
    return shared_redis.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared server, to look at what the code under test wrote."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(params=["lru", "cachetools"])
def l1_backend(request: pytest.FixtureRequest) -> str:
    """Each L1 backend in turn: the contract suite runs against both."""
    return str(request.param)


@pytest.fixture
def make_cache(redis_url: str, l1_backend: str) -> Iterator[Callable[..., Cache]]:
    """A factory of caches on the shared server (one per simulated process); all closed after."""
    made: list[Cache] = []

    def make(**settings: Any) -> Cache:
        settings.setdefault("redis_url", redis_url)
        settings.setdefault("l1_backend", l1_backend)
        cache = Cache(**settings)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture
def cache(make_cache: Callable[..., Cache]) -> Cache:
    """One cache on the shared server."""
    return make_cache()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A three-master Redis Cluster for the whole session."""
    with RedisClusterServers() as cluster:
        yield cluster
