"""The engine on a real Redis Cluster: keys spread over slots, the bus, single-flight."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from tests.procs import run_in_processes
from tests.redis_cluster import RedisClusterServers
from tests.waiting import until
from tiered_cache import MISS, Cache


@pytest.fixture
def make_cluster_cache(redis_cluster: RedisClusterServers) -> Iterator[Callable[..., Cache]]:
    first = redis_cluster.servers[0]
    RedisCluster(host=first.host, port=first.port).flushall()
    made: list[Cache] = []

    def make(**settings: object) -> Cache:
        cache = Cache(redis_url=redis_cluster.url, fail_open=False, **settings)  # type: ignore[arg-type]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def test_keys_land_on_several_nodes(
    make_cluster_cache: Callable[..., Cache], redis_cluster: RedisClusterServers
) -> None:
    cache = make_cluster_cache()
    cache.set_many({f"k{i}": i for i in range(60)})
    counts = [redis.Redis(port=s.port).dbsize() for s in redis_cluster.servers]
    assert all(count > 0 for count in counts)
    assert sum(counts) == 60
    assert cache.get_many(*[f"k{i}" for i in range(60)]) == list(range(60))


def test_writes_and_deletes_reach_other_workers(make_cluster_cache: Callable[..., Cache]) -> None:
    writer, reader = make_cluster_cache(), make_cluster_cache()
    writer.set("k", "v1")
    assert reader.get("k") == "v1"
    writer.set("k", "v2")
    assert until(lambda: reader.get("k") == "v2")
    assert writer.delete("k") == 1
    assert until(lambda: reader.get("k", MISS) is MISS)


def test_namespaces_incr_clear_and_locks(make_cluster_cache: Callable[..., Cache]) -> None:
    cache, other = make_cluster_cache(), make_cluster_cache()
    users = cache.namespace("users")
    users.set("1", "ann")
    assert other.namespace("users").get("1") == "ann"
    cache.invalidate_namespace("users")
    assert until(lambda: other.namespace("users").get("1") is None)
    assert cache.incr("n") == 1
    assert other.incr("n", 2) == 3
    cache.set_many({f"x{i}": i for i in range(20)})
    assert cache.clear() == 22  # x0..x19, n, and users:1 under the old version
    assert until(lambda: other.get("x1", MISS) is MISS)
    with cache.lock("job", timeout=5):
        assert not other.lock("job", timeout=5).acquire(blocking=False)


def test_get_or_set_single_flight(make_cluster_cache: Callable[..., Cache]) -> None:
    first, second = make_cluster_cache(), make_cluster_cache()
    calls: list[int] = []

    def load() -> str:
        calls.append(1)
        return "loaded"

    assert first.get_or_set("k", load) == "loaded"
    assert second.get_or_set("k", load) == "loaded"
    assert calls == [1]

    def broken() -> str:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        first.get_or_set("other", broken)
    assert second.get_or_set("other", load) == "loaded"


def test_a_write_marks_no_lock_on_a_cluster(
    make_cluster_cache: Callable[..., Cache], redis_cluster: RedisClusterServers
) -> None:
    """A Cluster's pipelines refuse the script that marks a load in flight overtaken:
    none is sent, so writes work, and the loader stores and lets its lock go as it
    always did (a mark it could not clear would hold every later miss of the key for
    its lock's timeout)."""
    loading, writer = make_cluster_cache(), make_cluster_cache()
    read, go_on = threading.Event(), threading.Event()

    def load() -> str:
        read.set()
        assert go_on.wait(5)
        return "loaded"

    loader = threading.Thread(target=lambda: loading.get_or_set("item", load, lock_timeout=30))
    loader.start()
    assert read.wait(5)
    assert writer.delete("item") == 0
    assert writer.set("other", 1) and writer.set_many({"a": 1}) and writer.incr("n") == 1
    go_on.set()
    loader.join(5)
    first = redis_cluster.servers[0]
    with RedisCluster(host=first.host, port=first.port) as client:
        locks = list(client.scan_iter(match="*#lock", target_nodes=RedisCluster.ALL_NODES))
    assert locks == []
    assert writer.get("item") == "loaded"


def test_an_app_boots_and_fails_open_while_its_cluster_is_down() -> None:
    """A RedisCluster asks a node for the slot map as it is made: made at init_app, a
    cluster that is down would stop the app from booting. It is made on first use,
    inside the error boundary, where no node answering is an outage like any other."""
    from flask import Flask

    from tests.flask_apps import close_app
    from tests.redis_harness import free_port
    from tiered_cache import TieredCache

    app = Flask(__name__)
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    app.config.update(TIERED_CACHE_REDIS_URL=url, TIERED_CACHE_SESSIONS=True)
    tc = TieredCache(app)  # sessions register their Lua scripts here: still no connection
    try:
        with app.app_context():
            assert tc.get("k", MISS) is MISS
            assert tc.set("k", "v") is False
            assert TieredCache.state(app).cache.stats()["redis_errors"] >= 2
        result = app.test_cli_runner().invoke(args=["tiered-cache", "doctor"])
        assert result.exit_code == 1 and "FAIL" in result.output
        assert "Traceback" not in result.output
    finally:
        close_app(app)


def test_a_cluster_url_passes_its_password_to_every_node(
    redis_cluster: RedisClusterServers,
) -> None:
    admins = [server.client() for server in redis_cluster.servers]
    for admin in admins:
        admin.config_set("requirepass", "s3cret")
    try:
        url = redis_cluster.url.replace("redis+cluster://", "redis+cluster://:s3cret@")
        with Cache(redis_url=url, fail_open=False) as cache:
            cache.set_many({f"k{i}": i for i in range(20)})  # keys on every node
            assert cache.get_many(*(f"k{i}" for i in range(20))) == list(range(20))
    finally:
        for admin in admins:
            admin.config_set("requirepass", "")
            admin.close()


_FORKED: list[Cache] = []


def in_a_child_forked_while_the_client_was_being_made() -> object:
    cache = _FORKED[0]
    cache.set("forked", 1)
    return cache.get("forked")


def test_a_child_forked_while_the_cluster_client_was_being_made_does_not_hang(
    make_cluster_cache: Callable[..., Cache],
) -> None:
    """The cluster client is made on first use, under a lock; a fork while another
    thread holds it (its cluster slow to answer) must not leave the child waiting."""
    cache = make_cluster_cache(invalidation=False)
    client = cache.redis.client
    _FORKED[:] = [cache]
    try:
        with client._lock:  # type: ignore[attr-defined] # a thread making the client
            [value] = run_in_processes(
                in_a_child_forked_while_the_client_was_being_made,
                [()],
                timeout=20,
                start_method="fork",
            )
    finally:
        _FORKED.clear()
    assert value == 1


def test_doctor_counts_the_bus_listeners_of_every_node(
    redis_cluster: RedisClusterServers,
) -> None:
    """A cluster's PUBSUB NUMSUB counts the subscribers of the node asked: one listener
    on each node here, so any one node alone says fewer than there are."""
    from flask import Flask

    from tests.flask_apps import close_app
    from tiered_cache import TieredCache

    bus = "tc:1:#bus"
    admins = [server.client() for server in redis_cluster.servers]
    listeners = [admin.pubsub() for admin in admins]
    app = Flask(__name__)
    app.config.update(TIERED_CACHE_REDIS_URL=redis_cluster.url, TIERED_CACHE_INVALIDATION=False)
    TieredCache(app)
    try:
        for listener in listeners:
            listener.subscribe(bus)
        result = app.test_cli_runner().invoke(args=["tiered-cache", "doctor"])
        counts = [dict(admin.pubsub_numsub(bus))[bus.encode()] for admin in admins]
    finally:
        close_app(app)
        for listener, admin in zip(listeners, admins, strict=True):
            listener.close()
            admin.close()
    assert min(counts) >= 1
    assert f" {sum(counts)} listeners on {bus}" in result.output, result.output
