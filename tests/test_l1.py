"""L1 stores: one contract suite, run against both backends."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from tiered_cache.errors import ConfigurationError
from tiered_cache.l1 import L1_BACKENDS, Entry, L1Store, _Store, make_l1


def entry(gkey: str, size: int = 10, value: Any = None) -> Entry:
    return Entry(gkey if value is None else value, None, 1e18, 0.0, size, gkey)


def check(store: L1Store) -> None:
    assert isinstance(store, _Store)
    store._check_invariants()


@pytest.fixture(params=L1_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(backend: str) -> Callable[..., L1Store]:
    def build(max_items: int = 100, max_bytes: int = 10_000, **options: Any) -> L1Store:
        return make_l1(backend, max_items=max_items, max_bytes=max_bytes, **options)

    return build


def keys_of(store: L1Store, candidates: list[Hashable]) -> list[Hashable]:
    return [k for k in candidates if store.peek(k) is not None]


# -- basics and LRU order ---------------------------------------------------------------


def test_put_peek_len_nbytes(make: Callable[..., L1Store]) -> None:
    store = make()
    e = entry("g:a", size=12)
    assert store.put("a", e) is True
    assert store.peek("a") is e
    assert store.peek("missing") is None
    assert len(store) == 1
    assert store.nbytes == 12
    check(store)


def test_least_recently_used_is_evicted(make: Callable[..., L1Store]) -> None:
    store = make(max_items=3)
    for k in "abc":
        store.put(k, entry(f"g:{k}"))
    store.touch("a")
    store.peek("b")  # a peek is not a use
    store.put("d", entry("g:d"))
    assert keys_of(store, list("abcd")) == ["a", "c", "d"]
    assert store.evictions == 1
    check(store)


def test_touch_of_a_missing_key_raises_key_error(make: Callable[..., L1Store]) -> None:
    with pytest.raises(KeyError):
        make().touch("nope")


def test_replacing_a_key_makes_it_recent(make: Callable[..., L1Store]) -> None:
    store = make(max_items=2)
    store.put("a", entry("g:a"))
    store.put("b", entry("g:b"))
    store.put("a", entry("g:a", value="new"))
    store.put("c", entry("g:c"))
    assert keys_of(store, list("abc")) == ["a", "c"]
    a = store.peek("a")
    assert a is not None
    assert a.value == "new"


def test_item_bound(make: Callable[..., L1Store]) -> None:
    store = make(max_items=10)
    for i in range(25):
        store.put(i, entry(f"g{i}"))
        assert len(store) <= 10
    assert len(store) == 10
    assert store.evictions == 15
    assert keys_of(store, list(range(25))) == list(range(15, 25))
    check(store)


def test_byte_bound_and_replacement_accounting(make: Callable[..., L1Store]) -> None:
    store = make(max_bytes=100)
    for k in "abc":
        store.put(k, entry(f"g:{k}", size=30))
    assert store.nbytes == 90
    store.put("b", entry("g:b", size=5))  # replacing adjusts the total
    assert store.nbytes == 65
    store.put("d", entry("g:d", size=40))  # 105 > 100: "a" goes
    assert keys_of(store, list("abcd")) == ["b", "c", "d"]
    assert store.nbytes == 75
    store.put("b", entry("g:b", size=60))  # growing in place evicts others, never itself
    assert store.nbytes <= 100
    assert store.peek("b") is not None
    check(store)


def test_many_distinct_keys_never_exceed_the_byte_budget(make: Callable[..., L1Store]) -> None:
    store = make(max_items=1_000_000, max_bytes=50_000)
    rng = random.Random(7)
    for i in range(100_000):
        store.put(f"k{i}", entry(f"g{i}", size=rng.randrange(0, 2_000)))
        if store.nbytes > 50_000:
            pytest.fail(f"{store.nbytes} bytes held after {i + 1} puts")
    assert store.evictions == 100_000 - len(store)
    check(store)


def test_oversized_entry_is_not_stored_and_drops_the_old_copy(
    make: Callable[..., L1Store],
) -> None:
    store = make(max_bytes=100)
    store.put("a", entry("g:a", size=10))
    assert store.put("a", entry("g:a", size=101)) is False
    assert store.peek("a") is None
    assert store.nbytes == 0
    assert store.fill("b", entry("g:b", size=101), store.begin()) is False
    assert store.put("c", entry("g:c", size=100)) is True  # exactly the budget fits
    check(store)


def test_negative_size_is_refused(make: Callable[..., L1Store]) -> None:
    with pytest.raises(ValueError, match="negative"):
        make().put("a", entry("g:a", size=-1))


def test_pop_and_clear(make: Callable[..., L1Store]) -> None:
    store = make()
    for k in "abc":
        store.put(k, entry(f"g:{k}"))
    store.pop("b")
    store.pop("missing")
    assert keys_of(store, list("abc")) == ["a", "c"]
    check(store)
    seq = store.seq
    store.clear()
    assert len(store) == 0
    assert store.nbytes == 0
    assert store.seq > seq
    assert store.evictions == 0
    check(store)


# -- one local copy per Redis key ---------------------------------------------------------


def test_invalidate_drops_the_copy_whatever_its_local_key(make: Callable[..., L1Store]) -> None:
    store = make()
    store.put(("ns", 3, "a"), entry("tc:1:ns:3:a"))
    store.put("b", entry("tc:1::0:b"))
    store.invalidate("tc:1:ns:3:a")
    assert store.peek(("ns", 3, "a")) is None
    assert store.peek("b") is not None
    store.invalidate("never-stored")
    check(store)


def test_a_gkey_moved_to_a_new_local_key_leaves_the_old_one(make: Callable[..., L1Store]) -> None:
    store = make()
    store.put("old", entry("g"))
    assert store.fill("new", entry("g"), store.begin()) is True
    assert store.peek("old") is None
    assert store.peek("new") is not None
    check(store)
    store.invalidate("g")
    assert len(store) == 0
    check(store)


def test_a_local_key_moved_to_a_new_gkey_forgets_the_old_one(make: Callable[..., L1Store]) -> None:
    store = make()
    store.put("k", entry("g1"))
    store.put("k", entry("g2"))
    store.invalidate("g1")  # no longer held by "k"
    assert store.peek("k") is not None
    check(store)


def test_evictions_keep_the_reverse_index(make: Callable[..., L1Store]) -> None:
    store = make(max_items=5, max_bytes=100)
    for i in range(20):
        store.put(f"k{i}", entry(f"g{i % 7}", size=15))
        check(store)
    store.invalidate("g0")
    store.put("x", entry("g1", size=15))
    check(store)


# -- no stale refill ----------------------------------------------------------------------


def test_fill_is_refused_after_an_invalidation_of_its_key(make: Callable[..., L1Store]) -> None:
    store = make()
    since = store.begin()
    store.invalidate("g")
    assert store.fill("k", entry("g"), since) is False
    assert store.peek("k") is None
    assert store.fill("k", entry("g"), store.begin()) is True  # a read that began afterwards


def test_fill_is_accepted_after_other_keys_change(make: Callable[..., L1Store]) -> None:
    store = make()
    since = store.begin()
    store.invalidate("other")
    store.put("x", entry("other2"))
    assert store.fill("k", entry("g"), since) is True


def test_fill_is_refused_after_a_local_write_of_its_key(make: Callable[..., L1Store]) -> None:
    store = make()
    since = store.begin()
    written = entry("g", value="written")
    store.put("k", written)
    assert store.fill("k", entry("g", value="older"), since) is False
    assert store.peek("k") is written


def test_fill_is_refused_after_a_clear(make: Callable[..., L1Store]) -> None:
    store = make()
    since = store.begin()
    store.clear()
    assert store.fill("k", entry("g"), since) is False
    assert store.fill("k", entry("g"), store.begin()) is True


def test_put_with_since_is_refused_after_another_invalidation(
    make: Callable[..., L1Store],
) -> None:
    store = make()
    since = store.begin()
    store.invalidate("g")  # another worker's write landed during ours
    assert store.put("k", entry("g"), since) is False
    assert store.peek("k") is None
    assert store.fill("k", entry("g"), since) is False  # the put still counts as a write
    assert store.put("k", entry("g"), store.begin()) is True


def test_two_local_writes_that_race_leave_neither_copy(make: Callable[..., L1Store]) -> None:
    """Two threads of one worker write one key; Redis may keep either value, so the
    refused one must not leave the accepted one behind (it may be the one Redis lost)."""
    store = make()
    first, second = store.begin(), store.begin()  # both writes began before either landed
    assert store.put("k", entry("g", value="B"), second) is True
    assert store.put("k", entry("g", value="A"), first) is False
    assert store.peek("k") is None
    check(store)


def test_no_tombstones_without_reads_in_flight(make: Callable[..., L1Store]) -> None:
    store = make()
    for i in range(1000):
        store.invalidate(f"g{i}")
        store.put(f"k{i}", entry(f"p{i}"))
    assert isinstance(store, _Store)
    assert not store._tombs  # a burst of writes leaves nothing behind
    since = store.begin()
    assert store.fill("k", entry("g1"), since) is True  # nothing newer than this read
    store.end(since)
    check(store)


def test_tombstones_live_while_a_read_that_needs_them_is_in_flight(
    make: Callable[..., L1Store],
) -> None:
    store = make()
    assert isinstance(store, _Store)
    first = store.begin()
    store.invalidate("g1")
    second = store.begin()
    store.invalidate("g2")
    assert list(store._tombs) == ["g1", "g2"]
    store.end(first)  # g1's tombstone matters to no read left; g2's still to `second`
    assert list(store._tombs) == ["g2"]
    assert store.fill("k1", entry("g1"), second) is True
    assert store.fill("k2", entry("g2"), second) is False
    store.end(second)
    assert not store._tombs
    check(store)


def test_reads_beginning_at_the_same_sequence_are_counted(make: Callable[..., L1Store]) -> None:
    store = make()
    assert isinstance(store, _Store)
    one, two = store.begin(), store.begin()
    assert one == two
    store.invalidate("g")
    store.end(one)
    assert list(store._tombs) == ["g"]  # the other read that began there still needs it
    assert store.fill("k", entry("g"), two) is False
    store.end(two)
    assert not store._tombs


def test_reading_context_pairs_begin_and_end(make: Callable[..., L1Store]) -> None:
    store = make()
    assert isinstance(store, _Store)
    with pytest.raises(RuntimeError), store.reading() as since:
        store.invalidate("g")
        assert store._tombs
        raise RuntimeError("the Redis read failed")
    assert not store._readers
    assert not store._tombs
    assert since == 0


def test_tombstone_count_is_bounded(make: Callable[..., L1Store]) -> None:
    store = make(max_tombstones=3)
    since = store.begin()
    for i in range(10):
        store.invalidate(f"g{i}")
    assert isinstance(store, _Store)
    assert len(store._tombs) == 3
    assert store.fill("k", entry("other"), since) is False
    assert store.fill("k", entry("other"), store.begin()) is True
    check(store)


def test_fill_after_invalidation_race(make: Callable[..., L1Store]) -> None:
    """Thread A takes since, thread B invalidates, then A's fill is refused."""
    store = make()
    store.put("k", entry("g", value="v1"))
    took_since, invalidated = threading.Event(), threading.Event()
    result: list[bool] = []

    def reader() -> None:
        since = store.begin()
        value = "v1"  # what A read from Redis before B's write landed
        took_since.set()
        assert invalidated.wait(5)
        result.append(store.fill("k", entry("g", value=value), since))

    def invalidator() -> None:
        assert took_since.wait(5)
        store.invalidate("g")
        invalidated.set()

    threads = [threading.Thread(target=reader), threading.Thread(target=invalidator)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert result == [False]
    assert store.peek("k") is None


def test_no_stale_value_survives_racing_readers(make: Callable[..., L1Store]) -> None:
    """Readers fill from a simulated Redis while another worker writes and invalidates."""
    store = make()
    redis = {"g": 0}
    done = threading.Event()
    stale: list[tuple[int, int]] = []

    def reader() -> None:
        while not done.is_set():
            since = store.begin()
            value = redis["g"]
            time.sleep(0)  # let the writer in between the read and the fill
            store.fill("k", entry("g", value=value), since)

    def writer() -> None:
        deadline = time.monotonic() + 0.2
        version = 0
        while time.monotonic() < deadline:
            version += 1
            redis["g"] = version
            store.invalidate("g")  # the bus message for that write
            time.sleep(0)
            held = store.peek("k")
            if held is not None and held.value < version:
                stale.append((held.value, version))
        done.set()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert stale == []
    check(store)


# -- disabled store, configuration ---------------------------------------------------------


@pytest.mark.parametrize(("max_items", "max_bytes"), [(0, 1000), (10, 0), (0, 0)])
def test_zero_bound_disables_the_store(
    make: Callable[..., L1Store], max_items: int, max_bytes: int
) -> None:
    store = make(max_items=max_items, max_bytes=max_bytes)
    seq = store.seq
    assert store.put("a", entry("g:a", size=0)) is False
    assert store.fill("b", entry("g:b", size=0), store.begin()) is False
    assert store.peek("a") is None
    assert store.peek("b") is None
    assert len(store) == 0
    assert store.nbytes == 0
    assert store.seq == seq + 1  # the put still counts as an invalidation
    since = store.begin()
    store.invalidate("g:b")
    assert store.seq == since + 1
    check(store)


@pytest.mark.parametrize(
    ("max_items", "max_bytes", "setting"),
    [(-1, 10, "TIERED_CACHE_L1_MAX_ITEMS"), (1, -10, "TIERED_CACHE_L1_MAX_BYTES")],
)
def test_negative_bounds_are_configuration_errors(
    backend: str, max_items: int, max_bytes: int, setting: str
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        make_l1(backend, max_items=max_items, max_bytes=max_bytes)


def test_unknown_backend() -> None:
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_L1_BACKEND") as info:
        make_l1("redis", max_items=1, max_bytes=1)
    assert info.value.value == "redis"


def test_lru_hits_are_the_ordered_dicts_own_c_methods() -> None:
    store = make_l1("lru", max_items=10, max_bytes=100)
    data = store._data  # type: ignore[attr-defined]
    assert isinstance(data, OrderedDict)
    for method, name in ((store.peek, "get"), (store.touch, "move_to_end")):
        assert type(method).__name__ == "builtin_function_or_method"
        assert getattr(method, "__self__", None) is data
        assert getattr(method, "__name__", None) == name


# -- threads -----------------------------------------------------------------------------


def test_concurrent_use_keeps_the_invariants(make: Callable[..., L1Store]) -> None:
    store = make(max_items=40, max_bytes=3_000)
    local_keys: list[Hashable] = [f"k{i}" for i in range(150)]
    local_keys += [("ns", i) for i in range(50)]
    deadline = time.monotonic() + 0.5
    errors: list[BaseException] = []

    def run(body: Callable[[random.Random], None], seed: int) -> Callable[[], None]:
        def loop() -> None:
            rng = random.Random(seed)
            try:
                while time.monotonic() < deadline:
                    body(rng)
            except BaseException as exc:
                errors.append(exc)

        return loop

    def reader(rng: random.Random) -> None:
        key = rng.choice(local_keys)
        if store.peek(key) is not None:
            with contextlib.suppress(KeyError):  # gone since the peek: fine
                store.touch(key)

    def filler(rng: random.Random) -> None:
        with store.reading() as since:
            gkey = f"g{rng.randrange(120)}"
            store.fill(rng.choice(local_keys), entry(gkey, size=rng.randrange(0, 400)), since)

    def writer(rng: random.Random) -> None:
        roll = rng.random()
        key, gkey = rng.choice(local_keys), f"g{rng.randrange(120)}"
        if roll < 0.4:
            with store.reading() as since:
                store.put(key, entry(gkey, size=rng.randrange(0, 400)), rng.choice([None, since]))
        elif roll < 0.8:
            store.invalidate(gkey)
        elif roll < 0.995:
            store.pop(key)
        else:
            store.clear()

    def checker(rng: random.Random) -> None:
        check(store)
        time.sleep(0.01)

    bodies = [reader, reader, reader, filler, filler, writer, checker]
    threads = [threading.Thread(target=run(body, i)) for i, body in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(store) <= 40
    assert store.nbytes <= 3_000
    check(store)
