"""The contract of ``Cache`` and ``Namespace``, run against both L1 backends and real Redis."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from tests.waiting import until, warm
from tiered_cache import MISS, Cache, TieredCacheError
from tiered_cache.keys import KeyLayout
from tiered_cache.memoize import Memo, _arguments_repr

MakeCache = Callable[..., Cache]


def plain(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@contextmanager
def counting(url: str) -> Iterator[dict[str, int]]:
    """Count the Redis commands run inside the block (INFO commandstats deltas), but for
    the PINGs with which every cache's bus listener checks its connection now and then."""

    client = plain(url)

    def snapshot() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    before = snapshot()
    delta: dict[str, int] = {}
    yield delta
    after = snapshot()
    delta.update(
        {
            k: v - before.get(k, 0)
            for k, v in after.items()
            if v != before.get(k, 0) and k not in {"info", "ping"}
        }
    )


# -- basic values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["text", "ünïcødé", 0, -7, 3.5, True, None, [1, "a", None], {"a": {"b": [1, 2]}}, ""],
)
def test_set_then_get_round_trips(make_cache: MakeCache, value: Any) -> None:
    writer, reader = make_cache(), make_cache()
    assert writer.set("k", value)
    assert writer.get("k", MISS) == value
    assert reader.get("k", MISS) == value


def test_miss_returns_default_and_none_is_cacheable(cache: Cache) -> None:
    assert cache.get("absent") is None
    assert cache.get("absent", MISS) is MISS
    cache.set("none", None)
    assert cache.get("none", MISS) is None
    assert cache.has("none")
    assert not cache.has("absent")
    # By keyword too, as SPEC 2 writes it (the hit path stands in for the method).
    assert cache.get("absent", default=5) == 5
    assert cache.get(key="none", default=5) is None
    assert cache.namespace("n").get(key="absent", default=5) == 5


def test_writer_reads_its_own_write_from_l1(cache: Cache) -> None:
    cache.set("k", "v")
    hits = cache.stats()["l1_hits"]
    assert cache.get("k") == "v"
    assert cache.stats()["l1_hits"] == hits + 1


def test_l2_hit_is_one_round_trip_and_fills_l1(make_cache: MakeCache, redis_url: str) -> None:
    make_cache().set("k", {"v": 1})
    reader = make_cache()
    warm(reader)
    with counting(redis_url) as commands:
        assert reader.get("k") == {"v": 1}
    assert commands == {"get": 1}
    with counting(redis_url) as commands:
        assert reader.get("k") == {"v": 1}
    assert commands == {}


def test_mutating_a_returned_value_does_not_change_the_cache(make_cache: MakeCache) -> None:
    writer, reader = make_cache(), make_cache()
    original = {"list": [1, 2], "nested": {"x": 1}}
    writer.set("k", original)
    original["list"].append("caller mutates after set")
    for cache in (writer, reader, reader):  # from the writer's L1, from Redis, from L1
        value = cache.get("k")
        assert value == {"list": [1, 2], "nested": {"x": 1}}
        value["list"].append(3)
        value["nested"]["x"] = 2


def test_l1_holds_what_other_workers_decode(cache: Cache) -> None:
    cache.set("k", (1, 2))  # json has no tuples: every worker reads a list
    assert cache.get("k") == [1, 2]


def test_keys_must_be_strings(cache: Cache) -> None:
    with pytest.raises(TypeError, match="strings"):
        cache.get(("not", "a", "string"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strings"):
        cache.set(b"bytes", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["with space", "x" * 1000, "{tag}", "ключ", "a#b", "\n"])
def test_unsafe_or_long_keys_are_hashed(cache: Cache, redis_url: str, key: str) -> None:
    cache.set(key, "v")
    assert cache.get(key) == "v"
    names = [k.decode() for k in plain(redis_url).scan_iter("tc:1:*") if b"#lock" not in k]
    assert len(names) == 1
    assert names[0].startswith("tc:1::0:#")
    assert len(names[0]) < 60


# -- expiry -----------------------------------------------------------------------------


def test_timeout_expires_in_both_tiers(make_cache: MakeCache) -> None:
    cache = make_cache(ttl_jitter=0)
    cache.set("k", "v", timeout=0.3)
    assert cache.get("k") == "v"
    time.sleep(0.35)
    assert cache.get("k", MISS) is MISS
    assert make_cache().get("k", MISS) is MISS


def test_timeout_zero_never_expires(cache: Cache, redis_url: str) -> None:
    cache.set("k", "v", timeout=0)
    assert plain(redis_url).pttl(cache._layout.data("", 0, "k")) == -1


def test_default_timeout_and_jitter_spread_ttls(make_cache: MakeCache, redis_url: str) -> None:
    cache = make_cache(default_timeout=100, ttl_jitter=0.2)
    started = time.monotonic()
    cache.set_many({f"k{i}": i for i in range(50)})
    ttls = [plain(redis_url).pttl(cache._layout.data("", 0, f"k{i}")) for i in range(50)]
    waited_ms = (time.monotonic() - started) * 1000  # PTTLs shrink while we read them
    assert all(80_000 - waited_ms - 1 <= t <= 100_000 for t in ttls)
    assert max(ttls) - min(ttls) > 5_000  # spread, not all at once


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), 1e16, "60", True])
def test_a_timeout_redis_cannot_take_is_refused(cache: Cache, timeout: Any) -> None:
    """Refused as the call is made: Redis would answer 1e16 s with an error reply."""
    with pytest.raises(ValueError, match="timeout"):
        cache.set("k", "v", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        cache.set_many({"k": "v"}, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        cache.lock("job", timeout=timeout)
    # Before the loader runs (it ran, then the store refused: on every call), and where a
    # memoized function is written.
    loads: list[int] = []
    with pytest.raises(ValueError, match="timeout"):
        cache.get_or_set("k", lambda: loads.append(1), timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        cache.memoize(timeout=timeout)
    assert loads == [] and cache.get("k", MISS) is MISS


@pytest.mark.parametrize("option", ["stale_ttl", "lock_timeout"])
@pytest.mark.parametrize("seconds", [-1, float("nan"), 1e16])
def test_get_or_set_refuses_stale_and_lock_times_out_of_bounds(
    cache: Cache, option: str, seconds: float
) -> None:
    loads: list[int] = []
    with pytest.raises(ValueError, match=option):
        cache.get_or_set("k", lambda: loads.append(1), timeout=60, **{option: seconds})
    assert loads == [] and cache.get("k", MISS) is MISS
    assert cache.get_or_set("k", lambda: "v", timeout=60, **{option: 0}) == "v"


def test_l1_never_serves_entries_older_than_l1_ttl(make_cache: MakeCache, redis_url: str) -> None:
    cache = make_cache(l1_ttl=1.0)
    cache.set("k", "old")
    # Changed behind the cache's back (no bus message): only l1_ttl bounds the staleness.
    other = make_cache(invalidation=False)
    other.set("k", "new")
    assert cache.get("k") == "old"
    time.sleep(1.05)
    assert cache.get("k") == "new"


# -- add, delete, has, incr ---------------------------------------------------------------


def test_add_only_when_absent(make_cache: MakeCache) -> None:
    cache, other = make_cache(), make_cache()
    assert cache.add("k", 1)
    assert not other.add("k", 2)
    assert other.get("k") == 1
    assert cache.get("k") == 1


def test_delete_everywhere_and_count(make_cache: MakeCache) -> None:
    writer, reader = make_cache(), make_cache()
    writer.set_many({"a": 1, "b": 2})
    assert reader.get("a") == 1  # now in the reader's L1
    assert writer.delete("a", "b", "never-set") == 2
    assert writer.get("a", MISS) is MISS
    assert until(lambda: reader.get("a", MISS) is MISS)
    assert writer.delete() == 0


def test_incr_counts_in_redis_only(make_cache: MakeCache, redis_url: str) -> None:
    cache = make_cache(default_timeout=60)
    assert cache.incr("n") == 1
    assert cache.incr("n", 5) == 6
    assert cache.incr("n", -2) == 4
    assert cache.get("n") == 4
    assert 0 < plain(redis_url).pttl(cache._layout.data("", 0, "n")) <= 60_000
    assert make_cache().incr("n") == 5


def test_incr_refuses_a_value_that_is_not_a_counter(cache: Cache) -> None:
    cache.set("k", {"not": "a counter"})
    with pytest.raises(TieredCacheError, match="increment"):
        cache.incr("k")


def test_a_bad_delta_is_the_callers_error_not_an_outage(make_cache: MakeCache) -> None:
    """redis-py refuses a delta that is no number as a DataError, which counted as an
    outage: three bad calls opened the breaker and every write of the process was lost."""
    cache = make_cache(breaker_failures=3)
    for delta in (None, "1", 1.5, True, 2**63):
        with pytest.raises((TypeError, ValueError), match="delta"):
            cache.incr("n", delta)  # type: ignore[arg-type]
    assert cache.stats()["redis_errors"] == 0 and not cache.stats()["breaker_open"]
    assert cache.incr("n", 2**63 - 1) == 2**63 - 1


def test_incr_evicts_other_l1_copies(make_cache: MakeCache) -> None:
    writer, reader = make_cache(), make_cache()
    writer.incr("n")
    assert reader.get("n") == 1
    writer.incr("n")
    assert until(lambda: reader.get("n") == 2)


def test_a_failing_bus_listener_does_not_stop_invalidation(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    writer, reader = make_cache(), make_cache()
    heard: list[object] = []

    def broken(message: object) -> None:
        heard.append(message)
        raise RuntimeError("a feature's bug")

    reader._listen(broken)
    warm(reader)
    reader.set("k", 1)
    assert reader.get("k") == 1
    writer.set("k", 2)
    assert until(lambda: reader.get("k") == 2)
    assert None in heard  # told of the subscription, when messages may have been missed
    assert any(getattr(m, "keys", ()) for m in heard)  # and of the write
    assert any("a feature's bug" in r.getMessage() for r in caplog.records)
    writer.set("k", 3)
    assert until(lambda: reader.get("k") == 3)  # still listening


# -- many --------------------------------------------------------------------------------


def test_get_many_is_one_round_trip_for_the_misses(make_cache: MakeCache, redis_url: str) -> None:
    writer, reader = make_cache(), make_cache()
    writer.set_many({"a": 1, "b": [2], "c": None})
    reader.get("a")
    warm(reader)
    with counting(redis_url) as commands:
        values = reader.get_many("a", "b", "c", "missing", default="d")
    assert values == [1, [2], None, "d"]
    assert commands == {"mget": 1}


def test_set_many_is_one_round_trip_and_one_message(make_cache: MakeCache, redis_url: str) -> None:
    writer, reader = make_cache(), make_cache()
    warm(writer)
    reader.set("a", 0)
    assert reader.get("a") == 0
    with counting(redis_url) as commands:
        assert writer.set_many({"a": 1, "b": 2, "c": 3})
    # Three values, and the three scripts that mark the loads in flight they overtake.
    assert commands == {"set": 3, "eval": 3, "get": 3, "publish": 1}
    assert writer.get_many("a", "b", "c") == [1, 2, 3]
    assert until(lambda: reader.get("a") == 1)


# -- namespaces ----------------------------------------------------------------------------


def test_namespace_keys_are_separate_and_invalidated_together(make_cache: MakeCache) -> None:
    cache, other = make_cache(), make_cache()
    users = cache.namespace("users")
    users.set_many({"1": "ann", "2": "bob"})
    cache.set("1", "default namespace")
    cache.namespace("posts").set("1", "post")
    assert other.namespace("users").get("1") == "ann"  # held in other's L1 now

    first = cache.invalidate_namespace("users")
    assert first > 0
    assert users.get_many("1", "2") == [None, None]
    assert until(lambda: other.namespace("users").get("1") is None)
    assert cache.get("1") == "default namespace"
    assert cache.namespace("posts").get("1") == "post"
    users.set("1", "ann again")
    assert until(lambda: other.namespace("users").get("1") == "ann again")
    assert users.invalidate() == first + 1


def test_without_the_bus_a_namespace_bump_is_seen_within_l1_ttl(make_cache: MakeCache) -> None:
    """README: with invalidation off, L1 lives by ``l1_ttl`` alone; so does what this
    process knows of a namespace's version, or another worker's bump would never reach
    it (bumping leaves the old keys in Redis, where the old version still finds them)."""
    cache, other = make_cache(invalidation=False), make_cache(invalidation=False, l1_ttl=0.3)
    cache.namespace("users").set("1", "ann")
    assert other.namespace("users").get("1") == "ann"
    cache.invalidate_namespace("users")
    cache.namespace("users").set("1", "bob")
    time.sleep(0.35)
    assert other.namespace("users").get("1") == "bob"


def test_namespace_objects_are_reused(cache: Cache) -> None:
    assert cache.namespace("x") is cache.namespace("x")
    with pytest.raises(ValueError, match="namespace"):
        cache.namespace("")


# -- clear ----------------------------------------------------------------------------------


def test_clear_scans_and_keeps_namespace_counters(make_cache: MakeCache, redis_url: str) -> None:
    cache, other = make_cache(), make_cache()
    foreign = make_cache(prefix="other")
    foreign.set("k", "kept")
    cache.set_many({f"k{i}": i for i in range(1200)})
    cache.namespace("ns").set("k", 1)
    cache.invalidate_namespace("ns")
    assert other.get("k1") == 1
    version = plain(redis_url).get(cache._layout.counter("ns"))
    with counting(redis_url) as commands:
        assert cache.clear() == 1201
    assert "keys" not in commands
    assert commands["scan"] >= 1
    assert cache.get("k1", MISS) is MISS
    assert until(lambda: other.get("k1", MISS) is MISS)
    assert foreign.get("k") == "kept"
    assert plain(redis_url).get(cache._layout.counter("ns")) == version


# -- get_or_set ---------------------------------------------------------------------------


def test_clear_keeps_locks_and_leaves_look_alike_prefixes_alone(
    make_cache: MakeCache, redis_url: str
) -> None:
    """A held lock stays held (two holders would break what it protects); ``\\b`` in a
    prefix is a literal in the SCAN pattern, not a glob escape of ``b``; a key that is not
    UTF-8 under the prefix is deleted like any other, not an error."""
    cache, lookalike = make_cache(prefix="a\\b"), make_cache(prefix="ab")
    lookalike.set("k", "kept")
    cache.set("k", "gone")
    assert cache.lock("nightly", timeout=30).acquire(blocking=False)
    flight = KeyLayout.flight_lock(cache.layout.data("", 0, "loading"))
    raw = plain(redis_url)
    raw.set(flight, b"token", px=30_000)
    raw.set(cache.layout.base.encode() + b"\xff\xfe", b"foreign")
    assert cache.clear() == 2
    assert lookalike.get("k") == "kept"
    assert not cache.lock("nightly", timeout=30).acquire(blocking=False)
    assert raw.exists(flight) == 1


def test_get_or_set_loads_once_then_hits(make_cache: MakeCache, redis_url: str) -> None:
    cache, other = make_cache(), make_cache()
    calls: list[int] = []

    def load() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    assert cache.get_or_set("k", load) == {"n": 1}
    assert cache.get_or_set("k", load) == {"n": 1}
    assert other.get_or_set("k", load) == {"n": 1}
    assert len(calls) == 1
    assert cache.stats()["loader_calls"] == 1


def test_uncontended_miss_is_three_round_trips(
    make_cache: MakeCache, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make_cache()
    warm(cache)
    trips: list[str] = []
    run = cache._tier.run
    monkeypatch.setattr(
        cache._tier, "run", lambda what, call: (trips.append(what), run(what, call))[1]
    )
    with counting(redis_url) as commands:
        cache.get_or_set("k", lambda: "v")
    assert trips == ["get", "lock", "set"]  # each run() is one round trip (a pipeline at most)
    # GET; SET NX + GET; EVAL of store_if_held.lua (its GET of the lock, DEL, SET inside)
    # + PUBLISH
    assert commands == {"get": 3, "set": 2, "publish": 1, "eval": 1, "del": 1}


def test_get_or_set_loader_error_reaches_caller_and_frees_the_key(
    cache: Cache, redis_url: str
) -> None:
    def broken() -> str:
        raise LookupError("database said no")

    with pytest.raises(LookupError, match="database said no"):
        cache.get_or_set("k", broken)
    assert plain(redis_url).exists(KeyLayout.flight_lock(cache._layout.data("", 0, "k"))) == 0
    assert cache.get_or_set("k", lambda: "second try") == "second try"


def test_get_or_set_threads_share_one_load(make_cache: MakeCache) -> None:
    cache = make_cache()
    started = threading.Barrier(8)
    calls: list[int] = []
    results: list[Any] = []

    def load() -> list[int]:
        calls.append(1)
        time.sleep(0.2)
        return [42]

    def worker() -> None:
        started.wait()
        results.append(cache.get_or_set("k", load))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls == [1]
    assert results == [[42]] * 8
    results[0].append("mutated")
    assert cache.get("k") == [42]


# -- memoize ------------------------------------------------------------------------------


def test_memoize_caches_per_arguments(make_cache: MakeCache) -> None:
    cache, other = make_cache(), make_cache()
    calls: list[tuple[Any, ...]] = []

    def add(a: int, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    mine, theirs = cache.memoize(timeout=60)(add), other.memoize(timeout=60)(add)
    assert mine(1, b=2) == 3
    assert mine(1, b=2) == 3
    assert theirs(1, b=2) == 3  # from Redis: same function, same arguments
    assert mine(2) == 2
    assert calls == [(1, 2), (2, 0)]
    assert mine.__name__ == "add"
    assert mine.__wrapped__ is add


def test_a_user_key_that_spells_a_memoized_call_reaches_nothing(make_cache: MakeCache) -> None:
    """Memoized results live beside the user's keys, never among them: an app that
    caches under a key its visitors choose must not let one plant or read a result."""
    cache, other = make_cache(), make_cache()

    def price(item: int) -> str:
        return f"price of {item}"

    memoized, elsewhere = cache.memoize()(price), other.memoize()(price)
    assert memoized(7) == "price of 7"
    memo = memoized.memo
    fn_version = cache._versions.get(memo.counter)
    spelled = f"memo:{memo.qualname}:{fn_version}:{_arguments_repr((7,), {})}"
    assert cache.get(spelled) is None
    assert cache.set(spelled, "planted")
    assert memoized(7) == "price of 7"
    assert elsewhere(7) == "price of 7"  # from Redis
    assert cache.get(spelled) == "planted"


def test_delete_memoized_one_call_or_all(make_cache: MakeCache) -> None:
    cache, other = make_cache(), make_cache()
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    mine, theirs = cache.memoize()(square), other.memoize()(square)
    mine(2), mine(3), theirs(2), theirs(3)
    assert calls == [2, 3]
    cache.delete_memoized(mine, 2)
    assert until(lambda: (theirs(2), calls)[1] == [2, 3, 2])
    cache.delete_memoized(mine)
    mine(3)
    assert calls == [2, 3, 2, 3]
    assert until(lambda: (theirs(2), calls)[1] == [2, 3, 2, 3, 2])
    with pytest.raises(TypeError, match="not memoized"):
        cache.delete_memoized(square)


def test_memoize_unhashable_arguments_and_unless(cache: Cache) -> None:
    calls: list[Any] = []
    bypass = False

    @cache.memoize(unless=lambda: bypass)
    def total(values: list[int], *, scale: dict[str, int]) -> int:
        calls.append(values)
        return sum(values) * scale["k"]

    assert total([1, 2], scale={"k": 2}) == 6
    assert total([1, 2], scale={"k": 2}) == 6
    assert len(calls) == 1
    bypass = True
    assert total([1, 2], scale={"k": 2}) == 6
    assert len(calls) == 2


def test_memoize_refuses_arguments_with_process_specific_repr(cache: Cache) -> None:
    @cache.memoize()
    def ident(x: object) -> str:
        return "called"

    with pytest.raises(TypeError, match="__caching_id__"):
        ident(object())
    with pytest.raises(TypeError, match="__caching_id__"):
        ident((1, object()))  # inside a container too
    assert ident("meet at 0x10, by the pier") == "called"  # a string says what it likes

    class Keyed:
        def __caching_id__(self) -> str:
            return "keyed-1"

    assert ident(Keyed()) == "called"


class _User:
    def __init__(self, id_: object) -> None:
        self.id = id_

    def __caching_id__(self) -> object:
        return self.id

    @classmethod
    def count(cls, cache: Cache) -> int:
        return 1


class _Product(_User):
    pass


def test_memoize_keys_a_caching_id_with_its_class(cache: Cache) -> None:
    """The id went into the key bare: User(1), Product(1) and 1 were one call, and a
    User whose id is "7,8" was pair(7, 8)."""

    @cache.memoize()
    def describe(*args: object) -> str:
        return f"{[type(a).__name__ for a in args]} {[getattr(a, 'id', a) for a in args]}"

    calls = [(1,), (_User(1),), (_Product(1),), (7, 8), (_User("7,8"),), ("7,8",)]
    expected = [
        "['int'] [1]",
        "['_User'] [1]",
        "['_Product'] [1]",
        "['int', 'int'] [7, 8]",
        "['_User'] ['7,8']",
        "['str'] ['7,8']",
    ]
    for _ in range(2):  # the misses, then the hits: each call its own result
        assert [describe(*args) for args in calls] == expected
    # Inside a container too, with or without a set beside it (a default repr there
    # raised TypeError unless a set sent the container down the item-by-item path).
    assert _arguments_repr(([_User(1)],), {}) == _arguments_repr(([_User(1)],), {})
    assert "id=1" in _arguments_repr(([_User(1)],), {})
    assert "id=1" in _arguments_repr(([_User(1), {"a"}],), {})


def test_memoize_takes_a_class_whose_instances_have_a_caching_id(cache: Cache) -> None:
    """A classmethod's cls (or any class) was asked for its instances' caching id."""
    counted = cache.memoize()(_User.count.__func__)  # type: ignore[attr-defined]
    assert counted(_User, cache) == 1
    assert counted(_User, cache) == 1


def test_memoize_keys_a_set_the_same_in_every_process(cache: Cache) -> None:
    """A set's repr follows string hashes, which PYTHONHASHSEED makes differ between
    processes: the same call had another key, so another worker's delete_memoized for
    it did not reach this one's entry."""
    code = (
        "from tiered_cache.memoize import _arguments_repr;"
        "print(_arguments_repr((frozenset({'red', 'green', 'blue'}), [{'a', 'b'}]), {}))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in ("1", "2", "3", "4")
    }  # fmt: skip
    assert len(keys) == 1, keys
    looped: list[object] = []
    looped.append(looped)  # a list inside itself is keyed as repr writes it, not a crash
    assert _arguments_repr((looped, [{"a"}, looped]), {}) == "([[...]],[set({'a'}), [[...]]])"


@dataclasses.dataclass(frozen=True)
class Point:
    """An argument whose ``==`` is Python code (a dataclass's)."""

    x: int
    y: int


def l1_key_atoms(cache: Cache) -> set[type]:
    """The types of everything L1's keys are made of (tuples opened)."""
    found: set[type] = set()
    stack = [key for key, _ in cache._l1._entries()]
    while stack:
        item = stack.pop()
        if type(item) is tuple:
            stack.extend(item)
        else:
            found.add(type(item))
    return found


def test_memoize_keys_l1_only_by_values_that_compare_in_c(cache: Cache) -> None:
    """L1's hits take no lock: a key whose ``==`` runs Python code, compared during a
    lookup while another thread changes L1, corrupts CPython's OrderedDict (a KeyError
    on every later eviction, or a crash). Such arguments key L1 by their Redis key."""
    calls: list[tuple[Any, ...]] = []

    @cache.memoize(timeout=60)
    def describe(*args: Any, **kwargs: Any) -> str:
        calls.append(args)
        return repr((args, kwargs))

    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((Point(1, 2),), {}),
        (((1, 2),), {}),  # a tuple: its items could be anything
        ((1,), {"at": Point(0, 0)}),
        ((1, "a", b"b", 2.5, True, None), {}),
        ((1, "a"), {"k": "v"}),
    ]
    for args, kwargs in cases:
        for _ in range(2):
            assert describe(*args, **kwargs) == repr((args, kwargs))
    assert len(calls) == len(cases)  # each second call was a hit
    assert cache.stats()["l1_hits"] >= len(cases)
    assert l1_key_atoms(cache) - {str, bytes, int, float, bool, type(None), Memo} == set()


def test_memoize_in_a_namespace_is_dropped_with_it(cache: Cache) -> None:
    calls: list[int] = []

    @cache.memoize(namespace="catalogue")
    def price(item: int) -> int:
        calls.append(item)
        return item * 10

    price(1), price(1)
    cache.invalidate_namespace("catalogue")
    price(1)
    assert calls == [1, 1]


# -- locks and stats ------------------------------------------------------------------------


def test_lock_is_exclusive_across_caches(make_cache: MakeCache) -> None:
    first, second = make_cache(), make_cache()
    with first.lock("job", timeout=5):
        assert not second.lock("job", timeout=5).acquire(blocking=False)
        with pytest.raises(TimeoutError), second.lock("job", timeout=5, blocking_timeout=0.1):
            pass
    with second.lock("job", timeout=5):
        pass


def test_stats_has_the_documented_keys(cache: Cache) -> None:
    cache.set("k", "v")
    cache.get("k")
    cache.get("absent")
    stats = cache.stats()
    for name in [
        "l1_hits",
        "l2_hits",
        "misses",
        "hit_ratio",
        "l1_items",
        "l1_bytes",
        "l1_evictions",
        "invalidations_received",
        "bus_connected",
        "bus_reconnects",
        "breaker_open",
        "loader_calls",
        "stampede_waits",
        "stale_served",
        "ratelimit_refusals",
    ]:
        assert name in stats
    assert stats["l1_hits"] == 1
    assert stats["misses"] == 1
    assert stats["l1_items"] == 1
    assert stats["l1_bytes"] > 0
    assert stats["hit_ratio"] == 0.5


def test_l1_disabled_still_caches_in_redis(make_cache: MakeCache, redis_url: str) -> None:
    cache = make_cache(l1_max_items=0)
    cache.set("k", "v")
    warm(cache)
    with counting(redis_url) as commands:
        assert cache.get("k") == "v"
        assert cache.get("k") == "v"
    assert commands == {"get": 2}


def test_an_evicted_namespace_counter_never_brings_old_values_back(
    make_cache: MakeCache, redis_url: str
) -> None:
    """allkeys-* eviction (or a restart) may drop a counter while its data survives."""
    cache = make_cache()
    users = cache.namespace("users")
    users.set("1", "before")
    counter = cache._layout.counter("users")
    old = int(plain(redis_url).get(counter) or 0)
    assert plain(redis_url).delete(counter) == 1  # evicted; the old data key is still there
    fresh = make_cache()
    assert fresh.namespace("users").get("1") is None
    assert fresh.invalidate_namespace("users") > old
    assert fresh.namespace("users").get("1") is None


def test_a_bump_of_an_evicted_counter_drops_the_namespace_here_too(
    make_cache: MakeCache, redis_url: str
) -> None:
    """A bare INCR would restart the counter at 1, below the version this process holds,
    which it would then keep using: the value it just invalidated would still be served."""
    cache = make_cache()
    users = cache.namespace("users")
    users.set("1", "before")
    counter = cache._layout.counter("users")
    old = int(plain(redis_url).get(counter) or 0)
    assert plain(redis_url).delete(counter) == 1
    assert cache.invalidate_namespace("users") > old
    assert users.get("1") is None


@pytest.mark.parametrize("junk", ["garbage", "a list", str(2**63 - 1)])
def test_a_counter_holding_junk_is_replaced_by_the_next_bump(
    make_cache: MakeCache, redis_url: str, junk: str
) -> None:
    """Readers take a counter that is no counter for version 0, and INCR refused it: the
    bump raised a raw redis error and the namespace could never be invalidated again.
    Foreign bytes that read as the largest integer alike ("would overflow")."""
    writer, reader = make_cache(), make_cache()
    counter = writer._layout.counter("users")
    raw = plain(redis_url)
    raw.delete(counter)
    if junk == "a list":
        raw.rpush(counter, "x")
    else:
        raw.set(counter, junk)
    writer.namespace("users").set("1", "under the junk")
    assert reader.namespace("users").get("1") == "under the junk"
    version = writer.invalidate_namespace("users")
    assert version > 0 and int(raw.get(counter) or 0) == version
    assert until(lambda: reader.namespace("users").get("1", "gone") == "gone")
    assert writer.namespace("users").get("1", "gone") == "gone"
    assert writer.invalidate_namespace("users") == version + 1  # a counter again


@pytest.mark.parametrize("junk", [2**63 - 1, 2**62 + 5], ids=["overflows", "incr-takes-it"])
@pytest.mark.parametrize("invalidation", [True, False], ids=["bus", "no-bus"])
def test_a_counter_past_any_version_of_ours_is_junk_to_every_reader(
    make_cache: MakeCache, redis_url: str, invalidation: bool, junk: int
) -> None:
    """Foreign bytes reading as the largest integer: INCR refuses them ("would overflow")
    and the counter restarts at a fresh start, below what it held. Workers that had read
    it kept the higher version (versions only move up), so the bump invalidated nothing
    there, for as long as the bus stayed up, or for good without one."""
    writer = make_cache(invalidation=invalidation, l1_ttl=0.3)
    reader = make_cache(invalidation=invalidation, l1_ttl=0.3)
    writer.connect()
    reader.connect()
    counter = writer._layout.counter("users")
    raw = plain(redis_url)
    raw.set(counter, str(junk))
    writer.namespace("users").set("1", "under the junk")
    assert reader.namespace("users").get("1") == "under the junk"
    version = writer.invalidate_namespace("users")
    assert 0 < version < 2**62 and int(raw.get(counter) or 0) == version
    assert writer.namespace("users").get("1", "gone") == "gone"
    assert until(lambda: reader.namespace("users").get("1", "gone") == "gone")
    writer.namespace("users").set("2", "after")
    assert until(lambda: reader.namespace("users").get("2") == "after")


def test_two_workers_replacing_a_junk_counter_never_move_it_backwards(
    make_cache: MakeCache, redis_url: str
) -> None:
    """Both find the junk; the other one replaces it and bumps past it before ours
    replaces it too. A plain SET of our (earlier) fresh start moved the counter back to
    versions that would be handed out again, and bring back what was stored under them."""
    ours, theirs = make_cache(), make_cache()
    counter = ours._layout.counter("users")
    raw = plain(redis_url)
    raw.set(counter, "junk")
    original = ours._tier.run
    theirs_versions: list[int] = []

    def run(what: str, call: Callable[[Any], Any], **options: Any) -> Any:
        result = original(what, call, **options)
        if what == "invalidate_namespace" and not theirs_versions:  # our INCR was refused
            theirs_versions.append(theirs.invalidate_namespace("users"))
            theirs_versions.append(theirs.invalidate_namespace("users"))
        return result

    ours._tier.run = run  # type: ignore[method-assign]
    try:
        version = ours.invalidate_namespace("users")
    finally:
        ours._tier.run = original  # type: ignore[method-assign]
    assert theirs_versions[1] == theirs_versions[0] + 1
    assert version == theirs_versions[1] + 1 == int(raw.get(counter) or 0)


def test_a_closed_cache_starts_no_refresh(make_cache: MakeCache) -> None:
    cache = make_cache(ttl_jitter=0)
    stale = {"timeout": 1, "stale_ttl": 30, "early_refresh": False}
    assert cache.get_or_set("k", lambda: "k 1", **stale) == "k 1"
    time.sleep(1.05)
    cache.close()
    assert cache.get_or_set("k", lambda: "k 2", **stale) == "k 1"
    assert cache._loading._executor is None


def test_a_stale_read_after_close_serves_the_stale_value(make_cache: MakeCache) -> None:
    # A closed cache (or an exiting interpreter) refuses new background refreshes: the
    # reader of a stale value still gets it, not the executor's RuntimeError.
    cache = make_cache(ttl_jitter=0)
    stale = {"timeout": 1, "stale_ttl": 30, "early_refresh": False}
    for key in ("a", "b"):
        assert cache.get_or_set(key, lambda key=key: f"{key} 1", **stale) == f"{key} 1"
    time.sleep(1.05)
    assert cache.get_or_set("a", lambda: "a 2", **stale) == "a 1"  # refreshes in the background
    assert until(lambda: cache.get("a") == "a 2")
    cache.close()
    assert cache.get_or_set("b", lambda: "b 2", **stale) == "b 1"


def test_foreign_bus_messages_are_ignored_without_a_reconnect(
    make_cache: MakeCache, redis_url: str
) -> None:
    writer, reader = make_cache(), make_cache()
    warm(reader)
    for key in ("kept", "dropped"):
        assert writer.set(key, key) is True
    # The reader fills its L1 once the writes' own announcements have reached it.
    assert until(lambda: reader.stats()["invalidations_received"] == 2)
    for key in ("kept", "dropped"):
        assert reader.get(key) == key
    raw = plain(redis_url)
    junk = [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'{"s": 1}', b'{"s": "x", "r": [[1]]}']
    junk.append(b"[" * 100_000 + b"]" * 100_000)  # deeper than json can follow
    for message in junk:
        raw.publish(reader._layout.channel, message)
    writer.delete("dropped")  # a real message after the junk: delivered in order
    assert until(lambda: reader.get("dropped", MISS) is MISS)
    hits = reader.stats()["l1_hits"]
    assert reader.get("kept") == "kept"
    assert reader.stats()["l1_hits"] == hits + 1  # L1 was not flushed by a reconnection
    assert reader.stats()["bus_reconnects"] == 0 and reader.stats()["bus_connected"]


def test_what_is_owed_is_bounded_and_taken_once() -> None:
    """The deletes a process owes keep their order, stop at MAX_KEYS (the oldest go),
    and are handed out once."""
    from tiered_cache.owed import MAX_KEYS, Owed

    now = [0.0]
    owed = Owed(pause=2.0, timer=lambda: now[0])
    assert not owed.due and owed.take() == ((), ())
    owed.owe([f"k{i}" for i in range(MAX_KEYS + 2)], ["ns"])
    owed.owe(["k5"], ["ns"])  # owed twice: once
    assert owed.take() == ((), ()) and owed.due  # not within 2 s of the failure
    now[0] = 2.0
    keys, names = owed.take()
    assert (len(keys), keys[0], keys[-1], names) == (MAX_KEYS, "k2", f"k{MAX_KEYS + 1}", ("ns",))
    assert owed.forgotten == 2 and not owed.due and owed.take() == ((), ())
    owed.owe(["a", "b"], ["ns", "other"])
    owed.settle(["a"], ["ns"])  # written or bumped since: settled
    now[0] = 4.0
    assert owed.take() == (("b",), ("other",))
