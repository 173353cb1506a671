"""The engine through Redis Sentinel: the master is found by service name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from flask import Flask

from tests.flask_apps import close_app
from tests.redis_harness import HOST, RedisServer, free_port
from tests.redis_sentinel import SERVICE, SentinelServer
from tests.waiting import until
from tiered_cache import MISS, Cache, CacheUnavailable, TieredCache


@pytest.fixture
def sentinel(redis_server: RedisServer) -> Iterator[SentinelServer]:
    with SentinelServer(redis_server) as server:
        yield server


def test_caches_find_the_master_through_sentinel(
    sentinel: SentinelServer, redis_server: RedisServer
) -> None:
    writer = Cache(redis_url=sentinel.url, fail_open=False)
    reader = Cache(redis_url=sentinel.url, fail_open=False)
    try:
        assert writer.set("k", {"v": 1})
        assert reader.get("k") == {"v": 1}
        # The data really is on the monitored master.
        assert redis.Redis(port=redis_server.port).exists(writer._layout.data("", 0, "k")) == 1
        writer.set("k", {"v": 2})
        assert until(lambda: reader.get("k") == {"v": 2})  # the bus works through it too
        assert reader.get_or_set("other", lambda: "loaded") == "loaded"
        assert writer.delete("k") == 1
        assert until(lambda: reader.get("k", MISS) is MISS)
    finally:
        writer.close()
        reader.close()


def test_the_urls_user_and_percent_encoded_password_reach_the_master(
    sentinel: SentinelServer, redis_server: RedisServer
) -> None:
    """The user was dropped and the password passed on still percent-encoded: an ACL
    user, or a password holding "@" or "/", could not sign in through Sentinel."""
    master = redis.Redis(port=redis_server.port)
    master.acl_setuser(
        "cacher",
        enabled=True,
        passwords=["+p@ss/1"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    host_port = sentinel.url.removeprefix("redis+sentinel://")
    url = f"redis+sentinel://cacher:p%40ss%2F1@{host_port}"
    try:
        with Cache(redis_url=url, fail_open=False) as cache:
            assert cache.set("k", "signed in")
            assert cache.get("k") == "signed in"
            users = {client["user"] for client in master.client_list()}
            assert "cacher" in users
    finally:
        master.acl_deluser("cacher")
        master.close()


def test_an_unknown_service_is_an_outage_not_a_crash(sentinel: SentinelServer) -> None:
    url = sentinel.url.rsplit("/", 1)[0] + "/no-such-service"
    with Cache(redis_url=url) as cache:
        assert cache.set("k", 1) is False  # fail open
        assert cache.get("k", MISS) is MISS
    with Cache(redis_url=url, fail_open=False) as cache, pytest.raises(CacheUnavailable):
        cache.get("k")


def test_an_app_with_two_sentinels_skips_the_dead_one(
    sentinel: SentinelServer, redis_server: RedisServer
) -> None:
    """``host:port,host:port``: the first Sentinel refuses connections, the second answers."""
    url = f"redis+sentinel://{HOST}:{free_port()},{sentinel.host}:{sentinel.port}/{SERVICE}"
    app = Flask("two_sentinels")
    app.config.update(TIERED_CACHE_REDIS_URL=url, TIERED_CACHE_FAIL_OPEN=False)
    tc = TieredCache(app)
    try:
        with app.app_context():
            assert tc.set("k", {"v": 1})
            assert tc.get("k") == {"v": 1}
        key = TieredCache.state(app).cache._layout.data("", 0, "k")
        with redis_server.client() as master:
            assert master.exists(key) == 1  # the data really is on the monitored master
    finally:
        close_app(app)
