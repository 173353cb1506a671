"""Fault injection against a real ``redis-server``: killed, paused, restarted, refused.

The contract (SPEC section 2, "Fail-open"): Redis errors and timeouts are misses or
dropped writes, never exceptions; a circuit breaker opens after ``breaker_failures``
consecutive failures so that an outage costs each call microseconds, not a socket
timeout; after ``breaker_reset`` one call probes; ``fail_open=False`` raises
:class:`CacheUnavailable`; locks never fail open. The bus reconnects after losing its
subscription and flushes L1 when it does.

Every test runs against its own server (the ``redis_server`` fixture), which it may kill,
pause or restart.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.injected import fail_version_reads
from tests.redis_harness import RedisServer, free_port
from tiered_cache import MISS, Cache, CacheUnavailable, TieredCacheError
from tiered_cache.framing import pack
from tiered_cache.keys import DEFAULT_NAMESPACE, KeyLayout, encode_name

pytestmark = pytest.mark.timeout(60)

# Generous bound for one call against a hung Redis: about one socket timeout is what the
# contract promises (socket_timeout=0.25 here); the rest is margin for a loaded machine.
HUNG_CALL_BUDGET = 1.0


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def _resubscribed(caches: tuple[Cache, ...], times: int) -> bool:
    """Every cache's bus has resubscribed at least ``times`` times and is connected now."""
    return all(c.stats()["bus_reconnects"] >= times and c.stats()["bus_connected"] for c in caches)


def _json_frame(value_json: bytes, ttl: float = 300.0) -> bytes:
    """The bytes a json Cache stores for a value (tag 1), written behind its back."""
    return pack(1, time.time() + ttl, 0.0, value_json)


@pytest.fixture
def caches() -> Iterator[list[Cache]]:
    """Caches made by a test; all closed afterwards, whatever state Redis is in."""
    made: list[Cache] = []
    yield made
    for cache in made:
        cache.close()


def _make(caches: list[Cache], server_or_url: RedisServer | str, **settings: Any) -> Cache:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    cache = Cache(redis_url=url, **settings)
    caches.append(cache)
    return cache


def _loader(value: Any) -> Callable[[], Any]:
    return lambda: value


def _one_of_everything(cache: Cache, i: int) -> dict[str, Any]:
    """Call every data method once; return what each returned (exceptions propagate)."""
    key = f"loop-{i % 7}"
    return {
        "get": cache.get(key, "dflt"),
        "set": cache.set(key, {"i": i}),
        "get_or_set": cache.get_or_set(f"gos-{i}", _loader(("loaded", i))),
        "delete": cache.delete(key),
        "get_many": cache.get_many(key, "other", default="dflt"),
        "incr": cache.incr("counter"),
        "has": cache.has(key),
    }


def _assert_down_results(results: dict[str, Any], i: int) -> None:
    assert results["get"] == "dflt"
    assert results["set"] is False
    # json turns the tuple into a list only on the way through Redis; failing open, the
    # loader's own value comes back.
    assert results["get_or_set"] == ("loaded", i)
    assert results["delete"] == 0
    assert results["get_many"] == ["dflt", "dflt"]
    assert results["incr"] is None
    assert results["has"] is False


# -- 1. Redis killed mid-run -------------------------------------------------------------


def test_killed_redis_fails_open_and_recovers(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    # l1_disconnected_ttl is long on purpose: the L1 copy of "held" stays servable through
    # the outage, so only the flush after the bus resubscribes can make it be re-read.
    cache = _make(
        caches, redis_server, breaker_failures=3, breaker_reset=0.3, l1_disconnected_ttl=30.0
    )
    assert cache.set("held", "before") is True
    assert cache.get("held") == "before"
    _wait_for(lambda: cache.stats()["bus_connected"], what="the bus to connect")
    assert cache.stats()["bus_reconnects"] == 0

    redis_server.kill()

    for i in range(20):  # the breaker opens within the first few calls; none may raise
        _assert_down_results(_one_of_everything(cache, i), i)
    stats = cache.stats()
    assert stats["breaker_open"] is True
    assert stats["breaker_opened"] >= 1
    assert stats["redis_errors"] >= 3
    # While Redis is gone, L1 still answers for what it holds.
    assert cache.get("held") == "before"

    started = time.perf_counter()
    for i in range(500):
        key = f"open-{i % 5}"
        cache.get(key)
        cache.set(key, i)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"1000 calls with the breaker open took {elapsed:.3f} s"

    redis_server.restart()  # same port, data lost
    # Behind the cache's back (no bus message): only an L1 flush can reveal this value.
    with redis_server.client() as plain:
        plain.set(cache._layout.data("", 0, "held"), _json_frame(b'"after"'))

    # Writes resume once the breaker lets a probe through and the probe succeeds.
    _wait_for(lambda: cache.set("resumed", {"ok": 1}), timeout=5.0, what="writes to resume")
    assert cache.stats()["breaker_open"] is False
    other = _make(caches, redis_server)
    assert other.get("resumed") == {"ok": 1}

    _wait_for(
        functools.partial(_resubscribed, (cache,), 1),
        timeout=8.0,
        what="the bus to resubscribe",
    )
    assert cache.get("held") == "after", "L1 was not flushed after the bus resubscribed"
    assert cache.get_or_set("gos-after", _loader([1, 2])) == [1, 2]
    assert other.get("gos-after") == [1, 2]


# -- 2. Redis paused (hung server) -------------------------------------------------------


def _run_bounded(target: Callable[[], Any], timeout: float) -> Any:
    """Run ``target`` in a thread; fail if it hangs past ``timeout``, re-raise its error."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"a cache call hung for more than {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _timed_calls(cache: Cache, n: int, tag: str) -> list[float]:
    """``n`` rounds of mixed calls; the duration of each call."""
    durations: list[float] = []
    calls: list[Callable[[int], Any]] = [
        lambda i: cache.get(f"{tag}-{i}"),
        lambda i: cache.set(f"{tag}-{i}", i),
        lambda i: cache.get_or_set(f"{tag}-gos-{i}", _loader(i)),
        lambda i: cache.get_many(f"{tag}-{i}", f"{tag}-x"),
        lambda i: cache.has(f"{tag}-{i}"),
        lambda i: cache.delete(f"{tag}-{i}"),
        lambda i: cache.incr(f"{tag}-n"),
    ]
    for i in range(n):
        call = calls[i % len(calls)]
        started = time.perf_counter()
        call(i)
        durations.append(time.perf_counter() - started)
    return durations


def test_paused_redis_costs_one_timeout_per_call_then_nothing(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    cache = _make(caches, redis_server, socket_timeout=0.25, breaker_failures=3, breaker_reset=1.0)
    assert cache.set("warm", 1) is True
    assert cache.get_many("warm", "cold") == [1, None]

    redis_server.pause()
    durations: list[float] = []
    for i in range(10):
        durations += _run_bounded(functools.partial(_timed_calls, cache, 1, f"p{i}"), 5.0)
        if cache.stats()["breaker_open"]:
            break
    assert cache.stats()["breaker_open"] is True
    assert len(durations) <= 3 + 1
    assert max(durations) < HUNG_CALL_BUDGET, durations

    started = time.perf_counter()
    fast = _run_bounded(lambda: _timed_calls(cache, 700, "open"), timeout=10.0)
    total = time.perf_counter() - started
    # At most one half-open probe (one socket timeout) can fall inside this window.
    assert total < 0.5, f"700 calls with the breaker open took {total:.3f} s"
    assert max(fast) < HUNG_CALL_BUDGET

    redis_server.resume()
    _wait_for(lambda: cache.set("after", 2), timeout=5.0, what="writes to resume")
    assert cache.get("after") == 2
    with redis_server.client() as plain:
        assert plain.exists(cache._layout.data("", 0, "after")) == 1


def test_a_stalled_redis_costs_a_thread_one_timeout_not_one_per_call(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    """A request makes several Redis calls (namespace version, page, store...): after
    one times out, the thread's next calls fail at once for one socket timeout, before
    the breaker (here out of reach) would have opened. Other threads still try."""
    cache = _make(caches, redis_server, breaker_failures=1000)
    assert cache.set("warm", 1)
    redis_server.pause()
    try:
        started = time.perf_counter()
        assert cache.get("x") is None
        first = time.perf_counter() - started
        errors = cache.stats()["redis_errors"]
        started = time.perf_counter()
        for i in range(10):
            assert cache.get(f"k{i}") is None
            assert cache.set(f"k{i}", i) is False
            assert cache.namespace("n").get("k") is None
        rest = time.perf_counter() - started
        assert first >= 0.2  # it did wait for Redis once
        assert rest < 0.2, f"30 calls took {rest:.2f} s: each waited for the stalled Redis"
        assert cache.stats()["redis_errors"] == errors  # none of them reached Redis

        other = threading.Thread(target=lambda: cache.get("y"))
        other.start()
        other.join()
        assert cache.stats()["redis_errors"] == errors + 1  # its own attempt, its own timeout
    finally:
        redis_server.resume()
    time.sleep(0.3)  # past the window: this thread tries Redis again
    assert cache.set("after", 1) is True


def test_paused_redis_from_many_threads(redis_server: RedisServer, caches: list[Cache]) -> None:
    cache = _make(caches, redis_server, socket_timeout=0.25, breaker_failures=3, breaker_reset=0.5)
    assert cache.set("warm", 1) is True

    redis_server.pause()
    slowest: dict[int, float] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            barrier.wait(5)
            deadline = time.monotonic() + 1.5  # spans a few half-open probes too
            durations: list[float] = []
            i = 0
            while time.monotonic() < deadline:
                durations += _timed_calls(cache, 7, f"t{n}-{i}")
                i += 1
            slowest[n] = max(durations)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not any(t.is_alive() for t in threads), "a cache call hung"
    assert errors == []
    assert len(slowest) == 8
    assert max(slowest.values()) < HUNG_CALL_BUDGET, slowest
    stats = cache.stats()
    assert stats["breaker_open"] is True
    assert stats["breaker_opened"] >= 1
    # Hundreds of calls were made; only a handful may have reached the hung server.
    assert stats["redis_errors"] < 8 + 3 * 8, stats

    redis_server.resume()
    _wait_for(lambda: cache.set("after", 2), timeout=5.0, what="writes to resume")
    assert cache.get("after") == 2


# -- 3. fail_open=False ------------------------------------------------------------------


def test_fail_closed_raises_cache_unavailable(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    cache = _make(caches, redis_server, fail_open=False, breaker_failures=2, breaker_reset=30.0)
    assert cache.set("a", 1) is True
    redis_server.kill()

    with pytest.raises(CacheUnavailable) as first:
        cache.get("missing")
    assert isinstance(first.value.__cause__, redis.RedisError | OSError)
    with pytest.raises(CacheUnavailable) as second:
        cache.set("b", 2)
    assert isinstance(second.value.__cause__, redis.RedisError | OSError)
    assert cache.stats()["breaker_open"] is True

    started = time.perf_counter()
    for i in range(200):
        with pytest.raises(CacheUnavailable) as refused:
            cache.get(f"k{i}")
        assert refused.value.__cause__ is None  # the breaker refused; no Redis error
        with pytest.raises(CacheUnavailable):
            cache.set(f"k{i}", i)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"400 refused calls took {elapsed:.3f} s"
    with pytest.raises(CacheUnavailable):
        cache.get_many("x", "y")
    with pytest.raises(CacheUnavailable):
        cache.incr("n")
    assert cache.stats()["redis_errors"] == 2


@pytest.mark.parametrize(
    "write",
    [
        lambda cache: cache.set("k", "new"),
        lambda cache: cache.set_many({"k": "new"}),
        lambda cache: cache.delete("k"),
        lambda cache: cache.incr("k"),
        lambda cache: cache.clear(),
    ],
    ids=["set", "set_many", "delete", "incr", "clear"],
)
def test_fail_closed_a_write_that_raised_drops_the_local_copy(
    redis_server: RedisServer, caches: list[Cache], write: Callable[[Cache], Any]
) -> None:
    """A write whose reply is lost may still run, with its announcement, which reaches
    every worker but the writer: the writer must not keep serving the old value."""
    cache = _make(caches, redis_server, fail_open=False, breaker_failures=100)
    assert cache.set("k", "old") and cache.get("k") == "old"
    assert cache._l1_value("k") == "old"
    redis_server.pause()
    try:
        with pytest.raises(CacheUnavailable):
            write(cache)
        assert cache._l1_value("k") is MISS
    finally:
        redis_server.resume()


def test_fail_closed_a_bump_that_raised_forgets_the_version(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    """The same for a namespace: a bump that raised may have run, and the writer would
    otherwise keep the old version for as long as its bus stays up."""
    cache = _make(caches, redis_server, fail_open=False, breaker_failures=100)
    cache.connect()  # its bus's first subscription forgets every version: done with first
    products = cache.namespace("products")
    assert products.set("k", "old") and products.get("k") == "old"
    encoded = encode_name("products")
    assert cache._versions.cached(encoded) is not None
    redis_server.pause()
    try:
        with pytest.raises(CacheUnavailable):
            products.invalidate()
        assert cache._versions.cached(encoded) is None
    finally:
        redis_server.resume()


def test_fail_closed_a_junk_counter_restart_that_raised_forgets_the_version(
    redis_server: RedisServer, caches: list[Cache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replacement of a junk counter ran, and its announcement raised: the version
    this worker knew is gone from Redis, so it must not keep it either."""
    cache = _make(caches, redis_server, fail_open=False, breaker_failures=100)
    cache.connect()  # its bus's first subscription forgets every version: done with first
    products = cache.namespace("products")
    assert products.set("k", "old")
    encoded = encode_name("products")
    assert cache._versions.cached(encoded) is not None
    redis_server.client().set(cache._layout.counter(encoded), "junk")

    def lost(*args: Any, **kwargs: Any) -> bool:
        raise CacheUnavailable("the announcement's reply was lost")

    monkeypatch.setattr(cache, "_announce", lost)
    with pytest.raises(CacheUnavailable):
        products.invalidate()
    assert cache._versions.cached(encoded) is None


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_what_a_stall_kept_from_redis_is_paid_once_it_answers(
    redis_server: RedisServer, caches: list[Cache], fail_open: bool
) -> None:
    """A write-through during a stall: its SET timed out but was sent, and ran once
    Redis answered, while the namespace bump and the delete after it failed unsent.
    Redis kept the new record beside the old pages for good, which no message would
    ever drop. They are owed, and the writer's next call that reaches Redis pays them:
    the failed write's key deleted too (its value may or may not have landed)."""
    writer, reader = _make(caches, redis_server, fail_open=fail_open), _make(caches, redis_server)
    writer.connect()
    reader.connect()
    pages = writer.namespace("pages")
    assert writer.set("rec", "old") and pages.set("page", "page(old)")
    assert writer.set("other", "to-delete")
    assert reader.namespace("pages").get("page") == "page(old)"
    raw = redis_server.client()
    counter = writer._layout.counter(encode_name("pages"))
    version = raw.get(counter)

    def quietly(call: Callable[[], Any]) -> None:
        try:
            call()
        except CacheUnavailable:
            assert not fail_open

    redis_server.pause()
    try:
        quietly(lambda: writer.set("rec", "new"))
        quietly(lambda: writer.invalidate_namespace("pages"))
        quietly(lambda: writer.delete("other"))
    finally:
        redis_server.resume()
    assert raw.get(counter) == version  # the bump never reached Redis

    def paid() -> bool:
        quietly(lambda: writer.get("anything"))  # any call that reaches Redis pays
        return raw.get(counter) != version

    _wait_for(paid, what="the writer to pay its bump")
    gone = [writer._layout.data(DEFAULT_NAMESPACE, 0, key) for key in ("rec", "other")]
    assert raw.exists(*gone) == 0
    _wait_for(
        lambda: (
            (reader.get("rec"), reader.namespace("pages").get("page"), reader.get("other"))
            == (None, None, None)
        ),
        what="the reader to drop what was owed",
    )


def _owe_in_a_stall(redis_server: RedisServer, call: Callable[[], Any]) -> None:
    """Run ``call`` while Redis is paused, so that what it writes fails and is owed."""
    redis_server.pause()
    try:
        call()
    finally:
        redis_server.resume()


def test_an_owed_delete_stands_until_a_write_of_the_key_gets_through(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    """A later write of the key settles its debt only when it took effect: an add that
    found the key taken, or an incr of a value, left the old value in Redis for good."""
    writer = _make(caches, redis_server, breaker_reset=2.0)  # the debt waits 2 s
    writer.connect()
    raw = redis_server.client()
    gkey = writer._layout.data(DEFAULT_NAMESPACE, 0, "k")
    assert writer.set("k", "old")
    _owe_in_a_stall(redis_server, lambda: writer.set("k", "new"))
    time.sleep(0.3)  # past the thread's quiet moment after its timeout
    assert writer.add("k", "other") is False  # reached Redis: the key is taken
    with pytest.raises(TieredCacheError):
        writer.incr("k")
    assert raw.exists(gkey) == 1  # not paid yet (within 2 s of the failure)
    _wait_for(lambda: (writer.get("nothing"), raw.exists(gkey))[1] == 0, what="the debt paid")
    assert writer.get("k") is None  # read again from its source, not the old value


def test_an_owed_bump_of_a_junk_counter_replaces_it(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    """A bump paid late meets what a bump meets: a counter holding junk is replaced by a
    fresh start (its INCR's error was ignored, and the namespace never invalidated)."""
    writer = _make(caches, redis_server, breaker_reset=0.2)
    reader = _make(caches, redis_server)
    writer.connect()
    reader.connect()
    assert writer.namespace("pages").set("page", "page(old)")
    assert reader.namespace("pages").get("page") == "page(old)"
    _owe_in_a_stall(redis_server, lambda: writer.invalidate_namespace("pages"))
    raw = redis_server.client()
    counter = writer._layout.counter(encode_name("pages"))
    raw.delete(counter)
    raw.hset(counter, "junk", "1")
    _wait_for(lambda: (writer.get("nothing"), raw.type(counter))[1] == b"string")
    _wait_for(lambda: reader.namespace("pages").get("page") is None, what="the reader")


def test_a_call_may_override_fail_open(redis_server: RedisServer, caches: list[Cache]) -> None:
    """Sessions and rate limits share the breaker but decide for themselves what an
    outage means: ``run(fail_open=...)`` overrides the cache's setting for one call."""
    from tiered_cache.redis_tier import UNAVAILABLE

    closed = _make(caches, redis_server, fail_open=False, breaker_failures=100)
    opened = _make(caches, redis_server, fail_open=True, breaker_failures=100)
    redis_server.kill()

    assert closed.redis.run("ping", lambda c: c.ping(), fail_open=True) is UNAVAILABLE
    with pytest.raises(CacheUnavailable):
        opened.redis.run("ping", lambda c: c.ping(), fail_open=False)
    with pytest.raises(CacheUnavailable):
        closed.redis.run("ping", lambda c: c.ping())
    assert opened.redis.run("ping", lambda c: c.ping()) is UNAVAILABLE


# -- 4. The half-open probe --------------------------------------------------------------


def test_half_open_lets_exactly_one_probe_through(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    cache = _make(caches, redis_server, breaker_failures=3, breaker_reset=0.3)
    assert cache.set("a", 1) is True
    redis_server.kill()

    for i in range(3):
        assert cache.get(f"k{i}") is None
    stats = cache.stats()
    assert (stats["breaker_open"], stats["breaker_opened"], stats["redis_errors"]) == (True, 1, 3)

    for i in range(50):  # refused: nothing reaches Redis
        assert cache.get(f"k{i}") is None
    assert cache.stats()["redis_errors"] == 3

    time.sleep(0.35)
    for i in range(50):  # one probe, which fails and re-opens the breaker
        assert cache.get(f"k{i}") is None
    stats = cache.stats()
    assert (stats["breaker_open"], stats["breaker_opened"], stats["redis_errors"]) == (True, 2, 4)

    time.sleep(0.35)
    assert cache.set("x", 1) is False
    assert cache.stats()["breaker_opened"] == 3


def test_a_probe_that_raises_a_bug_does_not_jam_the_breaker(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    """The half-open probe ended by an exception that tells nothing about Redis (a bug in
    the call) must hand the probe on, or every later call would be refused for good."""
    cache = _make(caches, redis_server, breaker_failures=1, breaker_reset=0.1)
    redis_server.kill()
    assert cache.get("k") is None  # the breaker opens
    redis_server.restart()
    time.sleep(0.15)

    def bug(client: Any) -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        cache.redis.run("probe", bug)
    assert cache.set("k", 1) is True and cache.get("k") == 1


def test_a_bug_in_another_thread_does_not_free_the_probe_claim(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    """A call let through before the breaker opened that ends in a bug while another
    thread holds the half-open probe must leave that claim alone: freed, it would let a
    second probe go to Redis while the first is still out."""
    cache = _make(caches, redis_server, breaker_failures=1, breaker_reset=0.2)
    early_in, early_go, probe_in, probe_go = (threading.Event() for _ in range(4))
    errors: list[BaseException] = []

    def early_bug(client: Any) -> None:
        early_in.set()
        assert early_go.wait(5)
        raise ValueError("a bug, not an outage")

    def slow_probe(client: Any) -> Any:
        probe_in.set()
        assert probe_go.wait(5)
        return client.ping()  # Redis is gone: an outage, which re-opens the breaker

    def run(what: str, call: Callable[[Any], Any]) -> None:
        try:
            cache.redis.run(what, call)
        except BaseException as exc:
            errors.append(exc)

    early = threading.Thread(target=run, args=("early", early_bug), daemon=True)
    early.start()
    assert early_in.wait(5)  # let through while the breaker was closed
    redis_server.kill()
    assert cache.get("k") is None  # the breaker opens
    time.sleep(0.25)
    probe = threading.Thread(target=run, args=("probe", slow_probe), daemon=True)
    probe.start()
    assert probe_in.wait(5)  # the half-open probe, claimed and still out
    early_go.set()
    early.join(5)
    assert [type(exc) for exc in errors] == [ValueError]

    before = cache.stats()["redis_errors"]
    assert cache.get("other") is None
    assert cache.stats()["redis_errors"] == before, "a second probe went to Redis"
    probe_go.set()
    probe.join(5)
    assert cache.stats()["breaker_open"] is True


def test_half_open_probe_is_exclusive_across_threads(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    cache = _make(caches, redis_server, socket_timeout=0.25, breaker_failures=1, breaker_reset=0.3)
    assert cache.set("a", 1) is True
    redis_server.pause()
    assert cache.get("k") is None  # one timeout opens the breaker
    stats = cache.stats()
    assert (stats["breaker_open"], stats["redis_errors"]) == (True, 1)

    time.sleep(0.35)
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def worker() -> None:
        barrier.wait(5)
        results.append(cache.get("k", MISS))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == [MISS] * 8
    stats = cache.stats()
    # Exactly one of the eight went to the hung server (and waited out its timeout).
    assert stats["redis_errors"] == 2, stats
    assert stats["breaker_opened"] == 2

    redis_server.resume()
    time.sleep(0.35)
    assert cache.set("b", 2) is True
    assert cache.stats()["breaker_open"] is False


# -- 5. Nothing listening at startup -----------------------------------------------------


def test_connection_refused_at_startup(caches: list[Cache]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    cache = _make(caches, url, breaker_failures=2, breaker_reset=30.0)  # does not raise
    assert cache.get("a") is None
    assert cache.get("a", MISS) is MISS
    assert cache.set("a", 1) is False
    assert cache.get_or_set("a", _loader({"v": 1})) == {"v": 1}
    assert cache.get_many("a", "b") == [None, None]
    assert cache.has("a") is False
    assert cache.incr("n") is None
    assert cache.delete("a") == 0
    stats = cache.stats()
    assert stats["breaker_open"] is True
    assert stats["redis_errors"] == 2
    assert stats["bus_connected"] is False
    with pytest.raises(CacheUnavailable):
        cache.lock("l", timeout=1.0, blocking_timeout=0.1).acquire()


# -- 6. Redis restarted, data lost --------------------------------------------------------


def test_restart_with_data_loss_resets_namespace_versions(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    # Long disconnected TTL: cached versions and L1 copies would survive the restart but
    # for the flush that follows every resubscription.
    a = _make(caches, redis_server, l1_disconnected_ttl=30.0)
    b = _make(caches, redis_server, l1_disconnected_ttl=30.0)
    for _ in range(3):
        a.invalidate_namespace("ns")
    assert a.namespace("ns").set("k", "old") is True
    _wait_for(lambda: b.namespace("ns").get("k") == "old", what="B to read the old value")
    _wait_for(lambda: all(c.stats()["bus_connected"] for c in (a, b)), what="both buses")

    redis_server.restart()  # the counter (version 3) and the data are gone
    _wait_for(
        functools.partial(_resubscribed, (a, b), 1),
        timeout=8.0,
        what="both buses to resubscribe",
    )
    assert b.namespace("ns").get("k", MISS) is MISS
    assert a.namespace("ns").set("k", "new") is True
    _wait_for(lambda: b.namespace("ns").get("k") == "new", timeout=3.0, what="B to agree with A")
    assert a.invalidate_namespace("ns") > 3  # no number handed out before the restart
    _wait_for(lambda: b.namespace("ns").get("k", MISS) is MISS, timeout=3.0, what="the bump")


def test_a_namespace_version_redis_did_not_give_keys_nothing_in_redis(
    redis_server: RedisServer, caches: list[Cache], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counter read fails (a connection reset, the breaker half-opening) but the next
    # call would work: the namespace's data must not be read or written under a guessed
    # version, where a value is out of reach of every invalidation of the namespace.
    writer = _make(caches, redis_server)
    assert writer.namespace("ns").set("k", "current") is True
    client = redis.Redis.from_url(redis_server.url)
    version_0 = writer._layout.space(encode_name("ns"), 0)
    guessed = version_0 + "k"
    client.set(guessed, _json_frame(b'"left under version 0"'))

    fail_version_reads(monkeypatch, 2)
    reader = _make(caches, redis_server)  # has not fetched the version of "ns" yet
    assert reader.namespace("ns").get("k", MISS) is MISS
    assert reader.namespace("ns").set("other", "value") is False
    assert client.keys(version_0 + "*") == [guessed.encode()]
    _wait_for(lambda: reader.namespace("ns").get("k") == "current", what="the real version")


def test_a_hold_off_spares_the_calls_that_decide_their_own_outage(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    cache = _make(caches, redis_server)
    cache._tier.hold_off()
    assert cache.set("k", "v") is False  # the cache's own calls fail at once
    # Sessions and rate limits pass fail_open themselves: they still try Redis.
    assert cache._tier.run("session load", lambda c: c.ping(), fail_open=False) is True
    assert cache._tier.run("rate limit", lambda c: c.ping(), fail_open=True) is True
    _wait_for(lambda: cache.set("k", "v"), what="the hold-off to end")


def test_a_load_whose_store_fails_releases_its_flight_lock_when_redis_answers(
    redis_server: RedisServer, caches: list[Cache], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write, with the lock's release riding on it, fails; Redis answers the next
    # call: the lock goes at once, so other processes' waiters need not wait it out.
    cache = _make(caches, redis_server)
    real_run = cache._tier.run
    failed: list[str] = []

    def run(what: str, call: Callable[[Any], Any], **options: Any) -> Any:
        if what == "set" and not failed:
            failed.append(what)

            def reset(client: Any) -> None:
                raise redis.ConnectionError("connection reset by peer")

            return real_run(what, reset, **options)
        return real_run(what, call, **options)

    monkeypatch.setattr(cache._tier, "run", run)
    assert cache.get_or_set("k", lambda: "loaded") == "loaded"
    assert failed == ["set"]
    lock = KeyLayout.flight_lock(cache._layout.data(DEFAULT_NAMESPACE, 0, "k"))
    assert redis.Redis.from_url(redis_server.url).exists(lock) == 0


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_waiter_loads_when_redis_goes_away_instead_of_sleeping_out_the_lock(
    redis_server: RedisServer, caches: list[Cache], fault: str
) -> None:
    """A waiter sleeps until the bus announces the value; once the bus is lost no
    announcement can come, and it slept out the whole lock_timeout (10 s here) before
    it loaded. The bus wakes it when it is lost (a paused Redis: after its PONG is late)."""
    cache = _make(caches, redis_server)
    cache.connect()
    lock = KeyLayout.flight_lock(cache._layout.data(DEFAULT_NAMESPACE, 0, "k"))
    redis.Redis.from_url(redis_server.url).set(lock, b"another worker", px=60_000)
    result: list[Any] = []
    waiter = threading.Thread(
        target=lambda: result.append(cache.get_or_set("k", _loader("v"), lock_timeout=10))
    )
    waiter.start()
    _wait_for(lambda: cache.stats()["stampede_waits"] >= 1, what="the waiter to sleep")
    went_away = time.monotonic()
    redis_server.kill() if fault == "kill" else redis_server.pause()
    try:
        waiter.join(15)
        assert result == ["v"]
        # Lost at once when killed; paused, once the bus's PONG is late (at most 1 s here).
        assert time.monotonic() - went_away < 5
    finally:
        if fault == "pause":
            redis_server.resume()


# -- 7. Locks never fail open ------------------------------------------------------------


def test_lock_with_redis_down_raises(redis_server: RedisServer, caches: list[Cache]) -> None:
    cache = _make(caches, redis_server, breaker_failures=1, breaker_reset=30.0)
    with cache.lock("guard", timeout=2.0, blocking_timeout=0.5):
        pass

    redis_server.kill()
    lock = cache.lock("guard", timeout=2.0, blocking_timeout=0.5)
    with pytest.raises(CacheUnavailable) as raised, lock:
        pytest.fail("the body of a lock that was never taken ran")
    assert isinstance(raised.value.__cause__, redis.RedisError | OSError)

    assert cache.get("x") is None  # opens the breaker ...
    assert cache.stats()["breaker_open"] is True
    with pytest.raises(CacheUnavailable):  # ... and still the lock does not fail open
        cache.lock("guard", timeout=2.0, blocking_timeout=0.5).acquire()


def test_lock_with_redis_paused_raises(redis_server: RedisServer, caches: list[Cache]) -> None:
    cache = _make(caches, redis_server, socket_timeout=0.25)
    redis_server.pause()
    started = time.perf_counter()
    with pytest.raises(CacheUnavailable):
        _run_bounded(lambda: cache.lock("guard", 2.0, 0.5).acquire(), timeout=5.0)
    assert time.perf_counter() - started < 2.0
    redis_server.resume()


# -- 8. The bus survives losing its subscription -----------------------------------------


def _traffic(caches: tuple[Cache, ...], tag: str) -> None:
    """Ordinary commands from a few threads, so pooled connections are taken and reconnected."""

    def run(n: int) -> None:
        for i in range(10):
            for cache in caches:
                cache.set(f"{tag}-{n}-{i}", i)
                cache.get_many(f"{tag}-{n}-{i}", "nothing")

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)


def _held_in_l1(cache: Cache, key: str, value: Any) -> bool:
    """Read ``key`` until it is ``value`` and the read was an L1 hit."""
    if cache.get(key) != value:
        return False
    hits = cache.stats()["l1_hits"]
    return bool(cache.get(key) == value and cache.stats()["l1_hits"] == hits + 1)


def test_bus_reconnects_after_pubsub_clients_are_killed(
    redis_server: RedisServer, caches: list[Cache]
) -> None:
    # A long disconnected TTL: B's L1 copy would be served for 30 s without the bus, so
    # seeing A's new value proves the invalidation travelled over the bus.
    a = _make(caches, redis_server, l1_disconnected_ttl=30.0)
    b = _make(caches, redis_server, l1_disconnected_ttl=30.0)
    both = (a, b)
    _traffic(both, "warm")
    _wait_for(lambda: all(c.stats()["bus_connected"] for c in both), what="both buses")

    for round_ in range(1, 4):
        assert redis_server.kill_pubsub_clients() == 2
        _wait_for(
            functools.partial(_resubscribed, both, round_),
            timeout=8.0,
            what=f"reconnect #{round_}",
        )
        # Ordinary traffic afterwards must not make the bus drop its healthy new
        # subscription (and flush L1) again: one kill, one resubscription.
        _traffic(both, f"round{round_}")
        time.sleep(0.2)
        assert [c.stats()["bus_reconnects"] for c in both] == [round_, round_], (
            f"spurious bus reconnects after kill #{round_}"
        )
    assert all(c.stats()["bus_connected"] for c in both)

    assert a.set("x", {"v": 1}) is True
    _wait_for(lambda: _held_in_l1(b, "x", {"v": 1}), what="B to hold x in its L1")
    received = b.stats()["invalidations_received"]
    assert a.set("x", {"v": 2}) is True
    _wait_for(lambda: b.get("x") == {"v": 2}, timeout=3.0, what="B to see A's write")
    assert b.stats()["invalidations_received"] > received

    assert b.delete("x") == 1
    _wait_for(lambda: a.get("x", MISS) is MISS, timeout=3.0, what="A to see B's delete")
    assert [c.stats()["bus_reconnects"] for c in both] == [3, 3]
