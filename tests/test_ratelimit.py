"""``RateLimiter`` against real Redis: the strategies, round trips, deny cache, failures."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.procs import run_in_processes
from tests.ratelimit_support import CallCounter, CommandCounter, ManualTimer
from tests.redis_cluster import RedisClusterServers
from tests.redis_harness import RedisServer, free_port
from tests.waiting import until, warm
from tiered_cache import Cache, CacheUnavailable, RateLimitExceeded
from tiered_cache.bus import Message
from tiered_cache.ratelimit import STRATEGIES, Decision, RateLimiter, parse_limits

MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture
def make_limiter(redis_url: str) -> Iterator[MakeLimiter]:
    """Limiters on the shared server, each on a cache of its own (closed after)."""
    caches: list[Cache] = []

    def make(url: str = redis_url, **options: Any) -> RateLimiter:
        cache = Cache(redis_url=url, invalidation=False, breaker_failures=2, breaker_reset=0.5)
        caches.append(cache)
        return RateLimiter(cache, **options)

    yield make
    for cache in caches:
        cache.close()


@pytest.fixture
def own_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


def rl_keys(client: Any) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match="tc:1:#rl:*"))


# -- every strategy ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exactly_n_from_a_fresh_start_counting_down(
    make_limiter: MakeLimiter, strategy: str
) -> None:
    limiter = make_limiter(strategy=strategy, deny_cache_size=0)
    before = time.time()
    decisions = [limiter.hit("20/minute", "10.0.0.1", scope="s") for _ in range(25)]
    assert [d.admitted for d in decisions] == [True] * 20 + [False] * 5
    assert [d.states[0].remaining for d in decisions[:20]] == list(range(19, -1, -1))
    for decision in decisions[:20]:
        state = decision.states[0]
        assert 0 < state.reset_after <= 120  # the counter drains over two windows
        assert before <= state.reset_at <= time.time() + 121
        assert decision.retry_after == 0 and decision.refused_by is None
    for decision in decisions[20:]:
        assert decision.states[0].remaining == 0
        assert 0 < decision.retry_after <= 120
        assert decision.refused_by == parse_limits("20/minute")[0]
        assert not decision.local  # no deny cache here: every answer came from Redis


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_or_nothing_over_several_limits(make_limiter: MakeLimiter, strategy: str) -> None:
    limiter = make_limiter(strategy=strategy, deny_cache_size=0)
    hits = [limiter.hit("5/minute;2/hour", "k", scope="s") for _ in range(3)]
    assert [h.admitted for h in hits] == [True, True, False]
    assert hits[2].refused_by == parse_limits("2/hour")[0]
    # the refusal spent nothing on the limit that would have admitted it
    status = limiter.status("5/minute;2/hour", "k", scope="s")
    assert [s.remaining for s in status.states] == [3, 0]
    assert not status.admitted


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cost(make_limiter: MakeLimiter, strategy: str) -> None:
    limiter = make_limiter(strategy=strategy, deny_cache_size=0)
    assert limiter.hit("10/minute", "k", cost=4).states[0].remaining == 6
    assert limiter.hit("10/minute", "k", cost=6).states[0].remaining == 0
    refused = limiter.hit("10/minute", "k", cost=1)
    assert not refused.admitted and refused.retry_after > 0
    too_big = limiter.hit("10/minute", "other", cost=11)
    assert not too_big.admitted and too_big.never  # no wait would admit it
    assert limiter.status("10/minute", "other").states[0].remaining == 10  # nothing spent


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_key_expires(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis, strategy: str
) -> None:
    limiter = make_limiter(redis_server.url, strategy=strategy)
    limiter.hit("3/minute;100/hour", "k", scope="s")
    keys = rl_keys(own_redis)
    assert len(keys) == 2
    for key in keys:
        assert 0 < own_redis.pttl(key) <= 2 * 3600 * 1000


def test_sliding_window_log_keeps_an_entry_per_unit(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis
) -> None:
    limiter = make_limiter(redis_server.url, strategy="sliding-window-log")
    assert limiter.hit("5000/minute", "k", cost=2500).states[0].remaining == 2500  # > 1 ZADD
    assert limiter.hit("5000/minute", "k", cost=3).states[0].remaining == 2497
    (key,) = rl_keys(own_redis)
    assert own_redis.zcard(key) == 2503


def test_the_limiter_refuses_what_the_decorator_refuses(make_limiter: MakeLimiter) -> None:
    """``tc.limiter.hit`` and ``status`` took a sliding-window-log limit of millions,
    whose one request added two million entries in one script and stalled Redis."""
    limiter = make_limiter(strategy="sliding-window-log")
    for call in (limiter.hit, limiter.status):
        with pytest.raises(ValueError, match="too large for sliding-window-log"):
            call("2000000/hour", "client")
    assert limiter.hit("2000000/hour", "client", strategy="gcra").admitted


def test_sliding_window_counter_figures_of_a_large_quota_are_exact(
    make_limiter: MakeLimiter,
) -> None:
    """A byte quota's figures came out a unit short (products of the amount and the
    period in microseconds passed 2^53 in Lua's doubles), with a reset of 0 though units
    were spent: what the figures say is what the decision admits."""
    limiter = make_limiter(strategy="sliding-window-counter")
    for quota in ("1000000000/day", "999999999999999/day", "1000000000000000/second"):
        client = uuid.uuid4().hex
        amount = parse_limits(quota)[0].amount
        spent = limiter.hit(quota, client, cost=12345)
        assert spent.admitted and spent.states[0].remaining == amount - 12345, quota
        assert spent.states[0].reset_after > 0, quota
        assert limiter.hit(quota, client, cost=amount - 12345).admitted, quota
        last = limiter.hit(quota, client, cost=1)
        assert not last.admitted and last.states[0].remaining == 0, quota


def test_sliding_window_counter_is_constant_memory(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis
) -> None:
    limiter = make_limiter(redis_server.url, strategy="sliding-window-counter")
    for _ in range(50):
        limiter.hit("1000/minute", "k")
    (key,) = rl_keys(own_redis)
    # The window's number and its origin, this window's count and the previous one's.
    assert own_redis.type(key) == b"hash" and own_redis.hlen(key) == 4


def test_sliding_window_counter_admits_n_for_a_whole_period_from_a_fresh_start(
    make_limiter: MakeLimiter, own_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """SPEC 6: exactly N from a fresh start. Windows aligned on the epoch split a first
    burst sent just before an edge: after it, the burst's window weighs less and more
    units fit (100/10 seconds admitted 105 within a second). Windows count from the
    client's first unit."""
    limiter = make_limiter(redis_server.url, strategy="sliding-window-counter", deny_cache_size=0)

    def redis_seconds() -> float:
        seconds, micros = own_redis.time()
        return seconds + micros / 1e6

    # Just before an edge of the epoch-aligned 2 s windows, then just after it.
    assert until(lambda: 1.6 < redis_seconds() % 2 < 1.75, 5.0, 0.005)
    first = [limiter.hit("20/2 seconds", "fresh").admitted for _ in range(25)]
    assert first == [True] * 20 + [False] * 5
    assert until(lambda: 0.3 < redis_seconds() % 2 < 1.0, 5.0, 0.005)
    assert [limiter.hit("20/2 seconds", "fresh").admitted for _ in range(20)] == [False] * 20


def test_sliding_window_counter_keeps_its_counts_when_redis_s_clock_goes_back(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis
) -> None:
    """A failover to a replica whose clock runs behind: the stored window is ahead of
    the one Redis's TIME gives. The counts stay; a fresh start would hand every client
    a full quota again."""
    limiter = make_limiter(redis_server.url, strategy="sliding-window-counter", deny_cache_size=0)
    for _ in range(10):
        assert limiter.hit("10/minute", "k").admitted
    (key,) = rl_keys(own_redis)
    window = int(own_redis.hget(key, "w"))  # type: ignore[arg-type]
    own_redis.hset(key, "w", window + 1)  # as if stored by a clock up to a minute ahead
    refused = limiter.hit("10/minute", "k")
    assert not refused.admitted and refused.retry_after > 0
    assert own_redis.hget(key, "c") == b"10"
    # The wait counts from where the held window starts, not from now: the unit is back
    # once the window after it has run 6 s (its weight of 10 down to 9).
    seconds, micros = own_redis.time()
    origin = int(own_redis.hget(key, "o"))  # type: ignore[arg-type]
    ahead = ((window + 1) * 60_000_000 + origin - (seconds * 1_000_000 + micros)) / 1e6
    assert abs(refused.retry_after - (ahead + 60 + 6)) < 1.0, (refused.retry_after, ahead)


def test_gcra_burst_then_one_per_interval(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(strategy="gcra", deny_cache_size=0)
    burst = [limiter.hit("4/4 seconds", "k") for _ in range(5)]
    assert [d.admitted for d in burst] == [True] * 4 + [False]
    assert 0 < burst[4].retry_after <= 1.0  # one unit every 4 s / 4
    for _ in range(2):
        # Within the second after the unit comes back (a sleep may overrun), one unit.
        time.sleep(burst[4].retry_after + 0.01)
        again = limiter.hit("4/4 seconds", "k")
        assert again.admitted and again.states[0].remaining == 0
        burst[4] = limiter.hit("4/4 seconds", "k")
        assert not burst[4].admitted


def test_gcra_large_limits_stay_exact(make_limiter: MakeLimiter) -> None:
    # 10^6 per day does not fit 53 bits in microseconds: the script takes coarser ticks
    limiter = make_limiter(strategy="gcra", deny_cache_size=0)
    assert limiter.hit("1000000/day", "k", cost=999_999).states[0].remaining == 1
    assert not limiter.hit("1000000/day", "k", cost=2).admitted
    assert limiter.hit("1000000/day", "k", cost=1).states[0].remaining == 0


def test_gcra_with_coarse_ticks_says_when_a_unit_is_back(make_limiter: MakeLimiter) -> None:
    """10^10 a day takes 1 s ticks: a unit comes back at the next tick boundary, and the
    wait counted a whole tick from wherever in the current one the request fell (for a
    byte quota of 10 GB a month, 10 s said where 0.2 s was true)."""
    limiter = make_limiter(strategy="gcra", deny_cache_size=0)
    limit = "10000000000/day"
    assert limiter.hit(limit, "k", cost=10**10).admitted
    refused = limiter.hit(limit, "k")
    assert not refused.admitted and 0 < refused.retry_after < 1.0
    time.sleep(refused.retry_after + 0.05)
    assert limiter.hit(limit, "k").admitted


# -- one round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_evalsha_per_check_whatever_the_number_of_limits(
    make_limiter: MakeLimiter,
    redis_server: RedisServer,
    own_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    limiter = make_limiter(redis_server.url, strategy=strategy)
    limiter.hit("100/minute;1000/hour;10000/day", "warm")  # loads the script (NOSCRIPT)
    sent = CallCounter(limiter.cache.redis.client, monkeypatch)
    counter = CommandCounter(own_redis)
    counter.start()
    for i in range(10):
        assert limiter.hit("100/minute;1000/hour;10000/day", f"client-{i % 3}").admitted
    assert sent.calls == ["evalsha"] * 10  # what the client sent: one command per check
    assert counter.client_commands() == {"evalsha": 10}  # what the server saw
    assert counter.delta()["time"] == 10  # and the scripts ran inside it, once each


def test_first_use_loads_the_script(
    make_limiter: MakeLimiter, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = make_limiter(redis_server.url)
    sent = CallCounter(limiter.cache.redis.client, monkeypatch)
    limiter.hit("1/second", "k")
    limiter.hit("1/second", "k")
    assert sent.calls == ["evalsha", "script load", "evalsha", "evalsha"]


def test_script_reloaded_after_a_restart(
    make_limiter: MakeLimiter, redis_server: RedisServer
) -> None:
    limiter = make_limiter(redis_server.url)
    assert limiter.hit("5/minute", "k").available
    redis_server.restart()  # scripts and data are gone; NOSCRIPT -> SCRIPT LOAD -> EVALSHA
    found: list[Decision] = []
    # the old connection's error may come first, and open the breaker for 0.5 s
    assert until(lambda: found.append(limiter.hit("5/minute", "k")) or found[-1].available, 5.0)
    assert found[-1].states[0].remaining == 4


# -- the deny cache ------------------------------------------------------------------------


def test_refused_client_is_refused_from_memory_until_it_may_retry(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis
) -> None:
    timer = ManualTimer()
    limiter = make_limiter(redis_server.url, timer=timer)
    for _ in range(3):
        limiter.hit("3/minute", "k", scope="s")
    refused = limiter.hit("3/minute", "k", scope="s")
    assert not refused.admitted and not refused.local
    counter = CommandCounter(own_redis)
    counter.start()
    for _ in range(200):
        held = limiter.hit("3/minute", "k", scope="s")
        assert not held.admitted and held.local
    assert counter.total() == 0
    timer.advance(refused.retry_after - 0.5)
    held = limiter.hit("3/minute", "k", scope="s")
    assert held.local and held.retry_after == pytest.approx(0.5)
    waited = refused.retry_after - 0.5
    assert held.states[0].reset_after == pytest.approx(refused.states[0].reset_after - waited)
    timer.advance(0.5)  # the deny entry ends; Redis (on real time) still refuses
    asked = limiter.hit("3/minute", "k", scope="s")
    assert not asked.admitted and not asked.local
    assert counter.client_commands() == {"evalsha": 1}


def test_deny_cache_is_per_client_scope_and_limits(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    limiter.hit("1/minute", "k", scope="a")
    assert limiter.hit("1/minute", "k", scope="a").admitted is False
    assert limiter.hit("1/minute", "k", scope="b").admitted
    assert limiter.hit("1/minute", "other", scope="a").admitted
    assert limiter.hit("2/minute", "k", scope="a").admitted


def test_clearing_the_cache_frees_refused_clients_here(make_limiter: MakeLimiter) -> None:
    """``clear`` deletes every counter: refusals held in memory must go with them."""
    limiter = make_limiter()
    limiter.hit("1/minute", "k")
    assert not limiter.hit("1/minute", "k").admitted  # refused by Redis, then held
    assert limiter.hit("1/minute", "k").local  # refused from memory
    limiter.cache.clear()
    assert limiter.hit("1/minute", "k").admitted


def test_clearing_the_cache_frees_refused_clients_in_other_processes(redis_url: str) -> None:
    with Cache(redis_url=redis_url) as here, Cache(redis_url=redis_url) as there:
        there.connect()
        limiter = RateLimiter(there)
        limiter.hit("1/minute", "k")
        assert not limiter.hit("1/minute", "k").admitted
        assert limiter.hit("1/minute", "k").local
        here.clear()
        assert until(lambda: len(limiter.deny_cache) == 0)
        assert limiter.hit("1/minute", "k").admitted


def test_cheaper_request_asks_redis_costlier_is_held(make_limiter: MakeLimiter) -> None:
    """A cheaper request may fit sooner: it asks Redis. A costlier one cannot: it is
    refused from memory, with the held ``retry_after`` as its lower bound."""
    limiter = make_limiter(strategy="gcra")  # 10/minute: a unit frees every 6 s
    limiter.hit("10/minute", "k", cost=7)
    refused = limiter.hit("10/minute", "k", cost=5)
    assert not refused.admitted and not refused.local
    costlier = limiter.hit("10/minute", "k", cost=6)
    assert not costlier.admitted and costlier.local
    assert costlier.retry_after == pytest.approx(refused.retry_after, abs=0.5)
    assert limiter.status("10/minute", "k", cost=6).retry_after > costlier.retry_after
    cheaper = limiter.hit("10/minute", "k", cost=3)
    assert cheaper.admitted and not cheaper.local


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cost_above_a_limits_amount_is_never_admitted(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis, strategy: str
) -> None:
    """No wait can admit it: refused with an infinite ``retry_after`` without asking
    Redis and without holding anything, so a client choosing its costs makes no work."""
    limiter = make_limiter(redis_server.url, strategy=strategy)  # the server counted
    counter = CommandCounter(own_redis)
    counter.start()
    for _ in range(3):
        never = limiter.hit("10/minute;100/hour", "k", cost=11)
        assert not never.admitted and never.available and not never.local
        assert never.never and never.retry_after_seconds is None and never.states == ()
        assert str(never.refused_by) == "10/minute"
    assert counter.total() == 0 and len(limiter.deny_cache) == 0
    assert limiter.cache.stats()["ratelimit_refusals"] == 3
    assert limiter.hit("10/minute;100/hour", "k", cost=10).admitted  # nothing was spent
    status = limiter.status("10/minute;100/hour", "k", cost=11)  # admin use: asks Redis
    assert (
        not status.admitted
        and status.never
        and [s.remaining for s in status.states]
        == [
            0,
            90,
        ]
    )
    # Two limits too small: both ways name the smallest.
    both = [limiter.hit("10/minute;5/second", "j", cost=11)]
    both.append(limiter.status("10/minute;5/second", "j", cost=11))
    assert [str(d.refused_by) for d in both] == ["5/second", "5/second"]
    message = str(RateLimitExceeded("10/minute", never.retry_after))
    assert "never" in message and "inf" not in message


def test_cost_above_a_limits_amount_is_refused_while_redis_is_down() -> None:
    """Failing open admits what Redis cannot judge; a request no limit could ever admit
    is not one of those."""
    with Cache(redis_url=f"redis://127.0.0.1:{free_port()}", invalidation=False) as cache:
        limiter = RateLimiter(cache, fail_open=True)
        assert limiter.hit("10/minute", "k", cost=1).admitted  # Redis down: failed open
        never = limiter.hit("10/minute", "k", cost=11)
        assert not never.admitted and never.never


def test_same_limit_twice_is_refused() -> None:
    """Two limits of one amount and period would share a counter and count twice."""
    with pytest.raises(ValueError, match="'10/hour' and '10 per 60 minutes'"):
        parse_limits("10/hour;10 per 60 minutes")
    with Cache(redis_url=f"redis://127.0.0.1:{free_port()}", invalidation=False) as cache:
        limit = parse_limits("5/minute")[0]
        with pytest.raises(ValueError, match="same limit"):
            RateLimiter(cache).hit([limit, limit], "k")


def test_reset_frees_clients_held_by_every_limiter_of_the_process(redis_url: str) -> None:
    """The bus does not echo a process's own messages: a reset reaches the other
    limiters of its process directly."""
    with Cache(redis_url=redis_url) as cache:
        cache.connect()
        admin, worker = RateLimiter(cache), RateLimiter(cache)
        worker.hit("1/minute", "k")
        assert worker.hit("1/minute", "k").local is False
        assert worker.hit("1/minute", "k").local  # held
        admin.reset("k")
        assert len(worker.deny_cache) == 0
        assert worker.hit("1/minute", "k").admitted


def test_deny_cache_is_bounded(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(deny_cache_size=5)
    for i in range(12):
        limiter.hit("1/minute", f"k{i}")
        assert not limiter.hit("1/minute", f"k{i}").admitted
    assert len(limiter.deny_cache) == 5
    assert limiter.hit("1/minute", "k11").local
    assert not limiter.hit("1/minute", "k0").local  # evicted: asked Redis again


def _child_sees(limiter: RateLimiter) -> tuple[int, bool, bool]:
    held = len(limiter.deny_cache)
    decision = limiter.hit("1/minute", "k")
    return held, decision.admitted, decision.local


def test_forked_child_starts_with_an_empty_deny_cache(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    limiter.hit("1/minute", "k")
    assert not limiter.hit("1/minute", "k").admitted  # refused by Redis: held from now on
    assert limiter.hit("1/minute", "k").local
    assert len(limiter.deny_cache) == 1
    [(held, admitted, local)] = run_in_processes(_child_sees, [(limiter,)], start_method="fork")
    assert (held, admitted, local) == (0, False, False)  # asked Redis, which refused
    assert len(limiter.deny_cache) == 1  # the parent's is untouched


def test_refusals_are_counted(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    limiter.hit("1/minute", "k")
    for _ in range(3):
        limiter.hit("1/minute", "k")
    assert limiter.cache.stats()["ratelimit_refusals"] == 3


# -- status and reset ------------------------------------------------------------------------


def test_status_spends_nothing(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    for _ in range(2):
        status = limiter.status("5/minute", "k", scope="s")
        assert status.admitted and status.states[0].remaining == 5
        assert status.states[0].reset_after == 0
    limiter.hit("5/minute", "k", scope="s")
    assert limiter.status("5/minute", "k", scope="s").states[0].remaining == 4
    assert limiter.status("5/minute", "k", scope="s", cost=5).admitted is False


def test_reset_by_key_by_scope_and_all(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis
) -> None:
    limiter = make_limiter(redis_server.url)
    for key in ("a", "b"):
        for scope in ("s1", "s2"):
            limiter.hit("1/minute;5/hour", key, scope=scope)
            limiter.hit("1/minute;5/hour", key, scope=scope)  # refused by Redis: held
            assert limiter.hit("1/minute;5/hour", key, scope=scope).local
    own_redis.set("tc:1:#rl-not-ours", "x")
    own_redis.set("tc:1:other", "x")
    assert len(rl_keys(own_redis)) == 8

    assert limiter.reset("a", scope="s1") == 2
    assert limiter.hit("1/minute;5/hour", "a", scope="s1").admitted
    assert limiter.hit("1/minute;5/hour", "a", scope="s2").local
    assert limiter.reset("a") == 4
    assert limiter.hit("1/minute;5/hour", "a", scope="s2").admitted
    assert limiter.hit("1/minute;5/hour", "b", scope="s2").local
    assert limiter.reset(scope="s2") == 4  # a's and b's
    assert limiter.hit("1/minute;5/hour", "b", scope="s2").admitted
    assert limiter.hit("1/minute;5/hour", "b", scope="s1").local
    assert limiter.reset() == 4
    assert rl_keys(own_redis) == [] and len(limiter.deny_cache) == 0
    assert own_redis.get("tc:1:other") == b"x" and own_redis.get("tc:1:#rl-not-ours") == b"x"


@pytest.fixture
def bus_limiters(redis_server: RedisServer) -> Iterator[tuple[RateLimiter, RateLimiter]]:
    """Two limiters on caches with the invalidation bus on, as in two worker processes
    (each cache is its own sender on the bus), on a server of the test's own."""
    caches = [Cache(redis_url=redis_server.url) for _ in range(2)]
    for cache in caches:
        warm(cache)
    yield RateLimiter(caches[0]), RateLimiter(caches[1])
    for cache in caches:
        cache.close()


def hold_refusal(limiter: RateLimiter, key: str, scope: str = "") -> None:
    limiter.hit("1/minute", key, scope=scope)
    assert not limiter.hit("1/minute", key, scope=scope).admitted  # refused by Redis: held
    assert limiter.hit("1/minute", key, scope=scope).local


def test_a_reset_frees_the_client_in_the_other_processes_too(
    bus_limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    worker, admin = bus_limiters
    for key, scope in (("a", "s1"), ("a", "s2"), ("b", "s1")):
        hold_refusal(worker, key, scope)
    assert len(worker.deny_cache) == 3

    assert admin.reset("a", scope="s1") == 1
    assert until(lambda: len(worker.deny_cache) == 2), "the reset never reached the worker"
    decision = worker.hit("1/minute", "a", scope="s1")
    assert decision.admitted and not decision.local
    assert worker.hit("1/minute", "a", scope="s2").local  # not covered: still held
    assert worker.hit("1/minute", "b", scope="s1").local

    assert admin.reset(scope="s2") == 1
    assert until(lambda: not worker.hit("1/minute", "a", scope="s2").local)
    assert worker.hit("1/minute", "b", scope="s1").local

    assert admin.reset() >= 1
    assert until(lambda: len(worker.deny_cache) == 0)
    assert worker.hit("1/minute", "b", scope="s1").admitted


def test_a_refusal_from_a_check_that_overlapped_a_reset_is_not_held(
    make_limiter: MakeLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = make_limiter()
    limiter.hit("1/minute", "k")
    checked = limiter._call

    def reset_meanwhile(*args: Any, **options: Any) -> Decision | None:
        decision = checked(*args, **options)  # Redis refuses...
        limiter.reset("k")  # ...and an admin resets before the refusal is held
        return decision

    monkeypatch.setattr(limiter, "_call", reset_meanwhile)
    refused = limiter.hit("1/minute", "k")
    assert not refused.admitted and len(limiter.deny_cache) == 0
    monkeypatch.undo()
    admitted = limiter.hit("1/minute", "k")
    assert admitted.admitted and not admitted.local


def test_refusals_are_forgotten_when_the_bus_may_have_missed_a_reset(
    bus_limiters: tuple[RateLimiter, RateLimiter], redis_server: RedisServer
) -> None:
    worker, _ = bus_limiters
    hold_refusal(worker, "k")
    with redis_server.client() as client:
        assert client.client_kill_filter(_type="pubsub") >= 1  # both listeners drop
    assert until(lambda: len(worker.deny_cache) == 0, 5.0)
    assert not worker.hit("1/minute", "k").local  # asked Redis (which still refuses)


def test_reset_messages_on_the_bus() -> None:
    message = Message("me", resets=(("{ab}", None), (None, "s"), (None, None)))
    assert Message.decode(message.encode()) == message
    for bad in ([["{ab}"]], [[1, None]], ["{ab}:s"]):
        body = json.dumps({"s": "other", "r": bad}).encode()
        with pytest.raises(ValueError, match="not a rate limit reset"):
            Message.decode(body)


def test_client_keys_are_hashed_and_cannot_pick_a_slot(
    make_limiter: MakeLimiter, redis_server: RedisServer, own_redis: redis.Redis
) -> None:
    limiter = make_limiter(redis_server.url)
    limiter.hit("5/minute", "{evil}:192.168.1.20", scope="a scope: with * and {braces}")
    (key,) = rl_keys(own_redis)
    assert "192.168" not in key and "evil" not in key and "braces" not in key
    assert key.count("{") == 1 and key.count("}") == 1
    assert limiter.reset(scope="a scope: with * and {braces}") == 1


def test_bad_arguments(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    with pytest.raises(ValueError, match="'nonsense'"):
        limiter.hit("nonsense", "k")
    with pytest.raises(ValueError, match="'leaky-bucket'"):
        limiter.hit("1/second", "k", strategy="leaky-bucket")
    with pytest.raises(ValueError, match="'leaky-bucket'"):
        make_limiter(strategy="leaky-bucket")
    for cost in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="cost"):
            limiter.hit("1/second", "k", cost=cost)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        limiter.hit("1/second", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        limiter.hit([], "k")


def test_limits_as_objects(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    minute = parse_limits("2/minute")[0]
    assert limiter.hit(minute, "k").states[0].remaining == 1
    assert limiter.hit([minute], "k").states[0].remaining == 0
    assert limiter.status("2/minute", "k").states[0].remaining == 0  # the same key


# -- Redis down ------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_killed(
    make_limiter: MakeLimiter, redis_server: RedisServer, fail_open: bool
) -> None:
    limiter = make_limiter(redis_server.url, fail_open=fail_open)
    assert limiter.hit("5/minute", "k").available
    redis_server.kill()
    for _ in range(5):  # errors, then the open breaker: the same answer, never a raise
        decision = limiter.hit("5/minute", "k")
        assert decision == Decision(
            admitted=fail_open, retry_after=0 if fail_open else 0.5, available=False
        )
    assert limiter.cache.redis.breaker.is_open
    with pytest.raises(CacheUnavailable):
        limiter.status("5/minute", "k")
    with pytest.raises(CacheUnavailable):
        limiter.reset()
    redis_server.restart()
    # after the breaker's cool-down (0.5 s) one probe goes through and closes it
    assert until(lambda: limiter.hit("5/minute", "k").available, 5.0)


def test_redis_paused_costs_one_timeout_then_the_breaker_answers(
    make_limiter: MakeLimiter, redis_server: RedisServer
) -> None:
    limiter = make_limiter(redis_server.url)
    limiter.hit("5/minute", "k")
    redis_server.pause()
    try:
        started = time.monotonic()
        decisions = [limiter.hit("5/minute", "k") for _ in range(20)]
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert all(d.admitted and not d.available for d in decisions)
    assert elapsed < 5  # two socket timeouts (0.25 s) before the breaker opens; hang guard


def test_foreign_data_under_our_key_fails_like_an_outage(
    make_limiter: MakeLimiter,
    redis_server: RedisServer,
    own_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = make_limiter(redis_server.url, strategy="sliding-window-log")
    limiter.hit("5/minute", "k")
    (key,) = rl_keys(own_redis)
    own_redis.delete(key)
    own_redis.set(key, "not a sorted set")
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        decision = limiter.hit("5/minute", "k")
    assert decision.admitted and not decision.available
    assert "rate limit check failed" in caplog.text
    assert not limiter.cache.redis.breaker.is_open  # Redis answered: it is up


# -- Redis Cluster ------------------------------------------------------------------------------


@pytest.fixture
def cluster_limiter(redis_cluster: RedisClusterServers) -> Iterator[Callable[..., RateLimiter]]:
    caches: list[Cache] = []

    def make(**options: Any) -> RateLimiter:
        prefix = "rl" + uuid.uuid4().hex[:8]  # the cluster lives as long as the session
        cache = Cache(redis_url=redis_cluster.url, invalidation=False, prefix=prefix)
        caches.append(cache)
        return RateLimiter(cache, **options)

    yield make
    for cache in caches:
        cache.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cluster_one_limit_and_several(
    cluster_limiter: Callable[..., RateLimiter], strategy: str
) -> None:
    limiter = cluster_limiter(strategy=strategy, deny_cache_size=0)
    single = [limiter.hit("3/minute", f"client-{i // 4}").admitted for i in range(16)]
    assert single == [True, True, True, False] * 4  # clients land on different nodes
    several = [limiter.hit("2/minute;10/hour;20/day", "c").admitted for _ in range(3)]
    assert several == [True, True, False]
    assert [s.remaining for s in limiter.status("2/minute;10/hour;20/day", "c").states] == [
        0,
        8,
        18,
    ]
    assert limiter.reset("c") == 3
    assert limiter.reset() == 4


def test_cluster_keys_of_one_client_share_a_slot(
    cluster_limiter: Callable[..., RateLimiter],
) -> None:
    limiter = cluster_limiter()
    for scope in ("a", "b"):
        limiter.hit("1/second;2/minute;3/hour", "client", scope=scope)
    client = limiter.cache.redis.client
    keys = list(client.scan_iter(match=limiter.cache.layout.base + "#rl:*"))
    assert len(keys) == 6
    assert len({client.keyslot(key) for key in keys}) == 1
