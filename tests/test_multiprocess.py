"""Cross-process guarantees of the engine, with real worker processes and a real Redis.

Each worker builds its own :class:`~tiered_cache.Cache` (as a gunicorn worker would) and
warms its invalidation bus before the scenario starts, so what is measured is the
guarantee, not the listener's start-up. Workers report what they saw; the parent asserts.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tests.procs import GroupSync, ProcessGroup, run_in_processes
from tests.redis_harness import RedisServer
from tests.waiting import until, warm
from tiered_cache import Cache

DEFAULT = "<default>"
STEP = 10.0  # seconds any barrier may wait: generous, only a broken worker hits it
SEEN_WITHIN = 2.0  # how long a worker waits for a change another worker made


# --- worker targets (module level: spawned children import them) -----------------------


def _evict_worker(sync: GroupSync, url: str, backend: str) -> dict[str, Any]:
    """Worker 0 writes and deletes ``k``; worker 1 holds it in L1 and watches."""
    with Cache(redis_url=url, l1_backend=backend) as cache:
        warm(cache)
        if sync.index == 0:
            return _evict_writer(sync, cache)
        return _evict_reader(sync, cache)


def _evict_writer(sync: GroupSync, cache: Cache) -> dict[str, Any]:
    assert cache.set("k", "v1")
    sync.barrier.wait(STEP)  # 1: v1 is stored
    sync.barrier.wait(STEP)  # 2: the reader holds v1 in L1
    assert cache.set("k", "v2")
    sync.barrier.wait(STEP)  # 3: v2 is stored
    sync.barrier.wait(STEP)  # 4: the reader looked for v2
    assert cache.delete("k") == 1
    sync.barrier.wait(STEP)  # 5: k is deleted
    sync.barrier.wait(STEP)  # 6: the reader looked for the delete
    return {}


def _evict_reader(sync: GroupSync, cache: Cache) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sync.barrier.wait(STEP)  # 1
    out["first"] = cache.get("k", DEFAULT)
    hits = cache.stats()["l1_hits"]
    out["second"] = cache.get("k", DEFAULT)
    out["l1_hit_gain"] = cache.stats()["l1_hits"] - hits
    sync.barrier.wait(STEP)  # 2
    sync.barrier.wait(STEP)  # 3
    l2_hits = cache.stats()["l2_hits"]
    out["saw_v2"] = until(lambda: cache.get("k", DEFAULT) == "v2", SEEN_WITHIN)
    out["l2_hit_gain"] = cache.stats()["l2_hits"] - l2_hits
    out["after_v2"] = cache.get("k", DEFAULT)
    sync.barrier.wait(STEP)  # 4
    sync.barrier.wait(STEP)  # 5
    out["saw_delete"] = until(lambda: cache.get("k", DEFAULT) == DEFAULT, SEEN_WITHIN)
    sync.barrier.wait(STEP)  # 6
    out["invalidations"] = cache.stats()["invalidations_received"]
    return out


def _namespace_worker(sync: GroupSync, url: str) -> dict[str, Any]:
    """Worker 0 bumps namespace ``users``; worker 1 holds one of its keys in L1."""
    with Cache(redis_url=url) as cache:
        warm(cache)
        users = cache.namespace("users")
        out: dict[str, Any] = {}
        if sync.index == 0:
            assert users.set("u1", {"name": "ann"})
            assert cache.set("plain", "kept")
        sync.barrier.wait(STEP)  # 1: stored
        if sync.index == 1:
            out["before"] = [users.get("u1", DEFAULT)]
            hits = cache.stats()["l1_hits"]
            out["before"].append(users.get("u1", DEFAULT))
            out["l1_hit_gain"] = cache.stats()["l1_hits"] - hits
        sync.barrier.wait(STEP)  # 2: the reader holds u1 in L1
        if sync.index == 0:
            out["version"] = cache.invalidate_namespace("users")
        sync.barrier.wait(STEP)  # 3: bumped
        if sync.index == 1:
            out["gone"] = until(lambda: users.get("u1", DEFAULT) == DEFAULT, SEEN_WITHIN)
            out["plain_after"] = cache.get("plain", DEFAULT)
        sync.barrier.wait(STEP)  # 4
        if sync.index == 0:
            assert users.set("u1", {"name": "bob"})
        sync.barrier.wait(STEP)  # 5: a new value in the new version
        if sync.index == 1:
            out["new"] = until(lambda: users.get("u1") == {"name": "bob"}, SEEN_WITHIN)
        return out


def _race_worker(sync: GroupSync, url: str, role: str, last: int) -> dict[str, Any]:
    """The writer writes 0..last; readers read in tight loops and report what they saw."""
    with Cache(redis_url=url) as cache:
        warm(cache)
        sync.barrier.wait(STEP)
        if role == "writer":
            for value in range(last + 1):
                assert cache.set("k", value)
                if value % 8 == 0:
                    time.sleep(0.001)  # let the readers interleave with the writes
            sync.stop.set()  # every write is done: the readers settle and report
            return {}
        return _race_reader(sync, cache, last)


def _race_reader(sync: GroupSync, cache: Cache, last: int) -> dict[str, Any]:
    seen: list[int] = []
    backwards: list[tuple[int, int]] = []
    reads = 0

    def read() -> int:
        nonlocal reads
        reads += 1
        value: int = cache.get("k", -1)
        if seen and value < seen[-1]:
            backwards.append((seen[-1], value))
        if not seen or value != seen[-1]:
            seen.append(value)
        return value

    while not sync.stop.is_set():
        for _ in range(16):
            read()
    # Settle: the last invalidation must reach us promptly (never l1_ttl later).
    settled = until(lambda: read() == last, SEEN_WITHIN, interval=0.001)
    # ...and nothing older may come back afterwards.
    stays = all(read() == last for _ in range(200))
    stats = cache.stats()
    return {
        "final": seen[-1],
        "settled": settled,
        "stays": stays,
        "backwards": backwards[:10],
        "intermediate": len({value for value in seen if 0 <= value < last}),
        "reads": reads,
        "l1_hits": stats["l1_hits"],
        "l2_hits": stats["l2_hits"],
    }


def _fork_child(cache: Cache) -> dict[str, Any]:
    """Runs in a child forked from a process whose ``cache`` is in use."""
    out: dict[str, Any] = {"l1_items_at_start": cache.stats()["l1_items"]}
    l2_hits = cache.stats()["l2_hits"]
    out["read"] = cache.get("k", DEFAULT)
    out["read_from_l2"] = cache.stats()["l2_hits"] - l2_hits
    out["set"] = cache.set("k", "from-child")
    out["bus_connected"] = until(lambda: cache.stats()["bus_connected"], 5.0)
    with redis.Redis.from_url(cache.config.redis_url, socket_timeout=2) as admin:
        out["admin_id"] = admin.client_id()
        out["clients"] = admin.client_list()
    cache.close()
    return out


# --- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["lru", "cachetools"])
def test_a_write_or_delete_in_one_process_evicts_the_l1_copy_in_another(
    redis_url: str, backend: str
) -> None:
    with ProcessGroup(_evict_worker, [(redis_url, backend)] * 2) as group:
        _, reader = group.join(60)
    assert reader["first"] == reader["second"] == "v1"
    assert reader["l1_hit_gain"] == 1, "the second read must be an L1 hit"
    assert reader["saw_v2"], f"the reader kept serving {reader['after_v2']!r} from L1"
    assert reader["l2_hit_gain"] >= 1, "the new value must have been re-read from Redis"
    assert reader["saw_delete"], "the reader kept serving a deleted key from L1"
    assert reader["invalidations"] >= 2


def test_namespace_invalidation_reaches_other_processes(redis_url: str) -> None:
    with ProcessGroup(_namespace_worker, [(redis_url,)] * 2) as group:
        writer, reader = group.join(60)
    assert writer["version"] >= 1
    assert reader["before"] == [{"name": "ann"}] * 2
    assert reader["l1_hit_gain"] == 1, "the second read of u1 must be an L1 hit"
    assert reader["gone"], "the reader kept serving a key of an invalidated namespace"
    assert reader["plain_after"] == "kept", "a namespace bump must not touch other keys"
    assert reader["new"], "the reader did not see the value written in the new version"


def test_readers_converge_on_the_last_of_many_writes(redis_url: str) -> None:
    last = 300
    roles = [("writer", last)] + [("reader", last)] * 3
    with ProcessGroup(_race_worker, [(redis_url, *args) for args in roles]) as group:
        readers = group.join(60)[1:]
    for n, reader in enumerate(readers):
        print(f"reader {n}: {reader}")
        assert reader["settled"], f"reader {n} is stuck on {reader['final']} != {last}"
        assert reader["final"] == last
        assert reader["stays"], f"reader {n} saw an older value again after {last}"
        # A reader is one thread: its L1 only ever holds the value it read from Redis
        # last, and Redis hands out values in write order, so it never goes back.
        assert reader["backwards"] == [], f"reader {n} went backwards: {reader['backwards']}"
    assert sum(r["l1_hits"] for r in readers) > 0, "the readers never hit L1: nothing tested"
    assert sum(r["intermediate"] for r in readers) > 0, "the readers saw no intermediate writes"


def test_a_killed_subscription_reconnects_and_flushes_l1(redis_server: RedisServer) -> None:
    with Cache(redis_url=redis_server.url) as cache, redis_server.client() as raw:
        warm(cache)
        assert cache.set("k", "old")
        assert cache.get("k") == "old"
        # A write this process never hears of, as if its message were lost while the
        # subscription was down: the bytes of another value copied under k, unpublished.
        assert cache.set("other", "new")
        raw.set(cache._layout.data("", 0, "k"), raw.get(cache._layout.data("", 0, "other")))
        assert cache.get("k") == "old", "L1 should still hold the old value"
        l2_hits = cache.stats()["l2_hits"]

        assert redis_server.kill_pubsub_clients() >= 1
        assert until(
            lambda: cache.stats()["bus_reconnects"] >= 1 and cache.stats()["bus_connected"], 5.0
        ), f"the listener did not resubscribe: {cache.stats()}"
        assert cache.get("k") == "new", "L1 was not flushed after the resubscription"
        assert cache.stats()["l2_hits"] > l2_hits


def test_a_paused_redis_stops_old_l1_entries_being_served(redis_server: RedisServer) -> None:
    dttl = 0.3
    settings: dict[str, Any] = {
        "l1_disconnected_ttl": dttl,
        "socket_timeout": 0.1,
        "breaker_reset": 0.3,
    }
    with Cache(redis_url=redis_server.url, **settings) as cache:
        warm(cache)
        stored = time.monotonic()
        assert cache.set("k", "v")
        redis_server.pause()
        paused_at = time.monotonic()
        try:
            last_served = None
            deadline = paused_at + 5.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                if cache.get("k", DEFAULT) == DEFAULT:
                    break
                last_served = started
                time.sleep(0.01)
            else:
                pytest.fail("the L1 entry was still served 5 s after Redis stopped answering")
            # Served while younger than l1_disconnected_ttl (an outage is not a flush)...
            assert time.monotonic() >= stored + dttl
            # ...and never later than that: neither the entry nor the last PONG is younger
            # than the pause.
            if last_served is not None:
                assert last_served < paused_at + dttl + 0.02, last_served - paused_at
        finally:
            redis_server.resume()
        assert until(lambda: cache.get("k", DEFAULT) == "v", 5.0, interval=0.05)
        assert until(lambda: cache.stats()["bus_connected"], 5.0)


def test_a_forked_child_gets_its_own_state_and_connections(redis_server: RedisServer) -> None:
    with Cache(redis_url=redis_server.url) as cache, redis_server.client() as admin:
        warm(cache)
        assert cache.set("k", "from-parent")
        assert cache.get("k") == "from-parent"
        parent_ids = {int(c["id"]) for c in admin.client_list()}
        reconnects = cache.stats()["bus_reconnects"]

        [child] = run_in_processes(_fork_child, [(cache,)], timeout=30, start_method="fork")

        assert child["l1_items_at_start"] == 0, "the child inherited its parent's L1"
        assert child["read"] == "from-parent"
        assert child["read_from_l2"] == 1
        assert child["set"] is True
        assert child["bus_connected"], "the child's listener never subscribed"
        # Connections the child opened (its admin connection, the one running CLIENT LIST,
        # aside): its own data connection and its own subscription.
        known = {*parent_ids, child["admin_id"]}
        opened = [c for c in child["clients"] if int(c["id"]) not in known]
        assert sorted("P" in c["flags"] for c in opened) == [False, True], child["clients"]
        subscriptions = [c for c in child["clients"] if "P" in c["flags"]]
        assert len(subscriptions) == 2, "parent and child each need a subscription"
        # The child's write reaches the parent through the bus: the child is another sender.
        assert until(lambda: cache.get("k") == "from-child", SEEN_WITHIN), (
            "the parent kept its L1 copy: it ignored the child's message as its own?"
        )
        # The parent goes on as before: same subscription, working reads and writes.
        assert cache.stats()["bus_connected"]
        assert cache.stats()["bus_reconnects"] == reconnects
        assert cache.set("k2", [1, 2])
        assert cache.get("k2") == [1, 2]
        assert until(lambda: len(admin.client_list(_type="pubsub")) == 1, 5.0)
        with Cache(redis_url=redis_server.url) as other:
            assert other.set("k2", [3])
        assert until(lambda: cache.get("k2") == [3], SEEN_WITHIN)
