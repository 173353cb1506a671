"""The races of SPEC 2, forced into their worst order with a real Redis.

A reader's Redis client is wrapped so that its GET returns (with the old value) only
after the race's other side has happened; nothing about Redis is simulated.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.redis_harness import RedisServer
from tests.waiting import until
from tiered_cache import Cache
from tiered_cache.keys import KeyLayout, encode_name

MakeCache = Callable[..., Cache]


class HeldGets(redis.Redis):
    """A real client whose GETs of one key pause after Redis answered, until released."""

    def __init__(self, url: str, key: str) -> None:
        pool = redis.ConnectionPool.from_url(url, socket_timeout=1.0)
        super().__init__(connection_pool=pool)
        self.key = key
        self.answered = threading.Event()
        self.go_on = threading.Event()

    def get(self, name: Any) -> Any:
        value = super().get(name)
        if name == self.key and not self.answered.is_set():
            self.answered.set()
            assert self.go_on.wait(5)
        return value


def test_a_read_overtaken_by_an_invalidation_does_not_fill_l1(
    make_cache: MakeCache, redis_url: str
) -> None:
    writer = make_cache()
    writer.set("k", "old")
    gkey = writer._layout.data("", 0, "k")
    client = HeldGets(redis_url, gkey)
    reader = Cache(redis=client)
    try:
        reader.get("other")  # starts the reader's bus
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(reader.get("k")))
        thread.start()
        assert client.answered.wait(5)  # the reader holds "old", not yet in its L1
        received = reader.stats()["invalidations_received"]
        writer.set("k", "new")
        assert until(lambda: reader.stats()["invalidations_received"] > received)
        client.go_on.set()
        thread.join(5)
        assert result == ["old"]  # the read itself began before the write
        assert reader.get("k") == "new"  # but "old" never entered L1
    finally:
        reader.close()
        client.close()


def test_a_slow_local_reader_cannot_overwrite_a_local_write(redis_url: str) -> None:
    writer_view = Cache(redis_url=redis_url)
    writer_view.set("k", "old")
    gkey = writer_view._layout.data("", 0, "k")
    client = HeldGets(redis_url, gkey)
    cache = Cache(redis=client)  # one process: a reader thread and a writer thread
    try:
        cache.get("other")
        thread = threading.Thread(target=cache.get, args=("k",))
        thread.start()
        assert client.answered.wait(5)
        cache.set("k", "new")  # read-your-writes: L1 now holds "new"
        client.go_on.set()
        thread.join(5)
        hits = cache.stats()["l1_hits"]
        assert cache.get("k") == "new"
        assert cache.stats()["l1_hits"] == hits + 1
    finally:
        cache.close()
        client.close()
        writer_view.close()


def test_a_write_raced_by_another_process_leaves_no_stale_l1_copy(
    make_cache: MakeCache, redis_url: str
) -> None:
    """Our SET lands first, theirs second, and their message overtakes our reply."""
    theirs = make_cache()
    ours = make_cache()
    ours.get("warm")
    gkey = ours._layout.data("", 0, "k")
    original = ours._tier.run

    def run(what: str, call: Callable[[Any], Any]) -> Any:
        result = original(what, call)
        if what == "set":  # after our pipeline ran: the other process writes, we hear it
            received = ours.stats()["invalidations_received"]
            theirs.set("k", "theirs")
            assert until(lambda: ours.stats()["invalidations_received"] > received)
        return result

    ours._tier.run = run  # type: ignore[method-assign]
    assert ours.set("k", "ours")
    ours._tier.run = original  # type: ignore[method-assign]
    assert redis.Redis.from_url(redis_url).get(gkey) is not None
    assert ours.get("k") == "theirs"


def test_what_a_leader_does_to_its_result_does_not_reach_its_followers(
    make_cache: MakeCache,
) -> None:
    # The threads that followed a single flight copy its value once it lands, which may be
    # after the leader's caller got the value and began changing it.
    cache = make_cache()
    results: list[Any] = []

    def follow() -> None:
        results.append(cache.get_or_set("k", lambda: "a follower's own load"))

    followers = [threading.Thread(target=follow) for _ in range(3)]
    switch_interval = sys.getswitchinterval()

    def load() -> dict[str, list[Any]]:
        for thread in followers:
            thread.start()
        assert until(lambda: cache.stats()["stampede_waits"] == 3)
        # From here the leader keeps the GIL until it blocks: the followers, woken when
        # the flight lands, copy its value only after its caller has changed its own.
        sys.setswitchinterval(100.0)
        return {"items": [1, 2]}

    try:
        mine = cache.get_or_set("k", load)
        mine["items"].append("the leader's own change")
    finally:
        sys.setswitchinterval(switch_interval)
    for thread in followers:
        thread.join(10)
    assert mine == {"items": [1, 2, "the leader's own change"]}
    assert results == [{"items": [1, 2]}] * 3
    assert cache.get("k") == {"items": [1, 2]}


@pytest.mark.parametrize("theirs_bumps", ["users", "other"], ids=["same-name", "another-name"])
def test_a_bump_overtaken_by_another_processs_bump_does_not_stick(
    make_cache: MakeCache, theirs_bumps: str
) -> None:
    """Our INCR answers v+1 and, before we record it, a bump of theirs reaches us. Of the
    same name (v+2): recording v+1 kept this process on a version no one writes under,
    for as long as the bus stayed up (their invalidated values served, new writes
    unseen). Of another name: not recording ours left the version from before our bump,
    and this process served what it had just invalidated."""
    ours, theirs = make_cache(), make_cache()
    mine, other = ours.namespace("users"), theirs.namespace("users")
    mine.get("warm")
    other.set("k", "before our bump")
    assert mine.get("k") == "before our bump"
    original = ours._tier.run

    def run(what: str, call: Callable[[Any], Any]) -> Any:
        result = original(what, call)
        if what == "invalidate_namespace":  # after our INCR: theirs, heard by us at once
            received = ours.stats()["invalidations_received"]
            if theirs_bumps == "users":
                other.set("k", "invalidated by theirs")
            theirs.invalidate_namespace(theirs_bumps)
            expected = received + (2 if theirs_bumps == "users" else 1)
            assert until(lambda: ours.stats()["invalidations_received"] >= expected)
        return result

    ours._tier.run = run  # type: ignore[method-assign]
    ours.invalidate_namespace("users")
    ours._tier.run = original  # type: ignore[method-assign]
    assert mine.get("k", "gone") == "gone"
    other.set("k2", "written after both bumps")
    assert until(lambda: mine.get("k2") == "written after both bumps")


def test_a_version_fetched_during_an_overtaken_bump_is_not_kept(make_cache: MakeCache) -> None:
    """A thread fetches the namespace's version (the one before our bump) while our INCR
    runs, after another name's invalidation moved the epoch: our bump, not recorded,
    must make that fetch lose too, or the process keeps the version it invalidated."""
    cache = make_cache()
    cache.connect()
    users = cache.namespace("users")
    users.set("k", "old")
    name = encode_name("users")
    assert cache._versions.cached(name) is not None
    cache._versions.forget(name)  # not known here any more (its trust ran out, say)
    original_run, original_write = cache._tier.run, cache._write
    fetched, go_on = threading.Event(), threading.Event()
    fetches: list[Any] = []

    def run(what: str, call: Callable[[Any], Any], **options: Any) -> Any:
        result = original_run(what, call, **options)
        if what == "namespace version" and threading.current_thread().name == "fetcher":
            fetched.set()  # it holds the old version, not yet recorded
            assert go_on.wait(5)
        return result

    def write(what: str, queue: Callable[[Any], object], **options: Any) -> Any:
        if what == "invalidate_namespace":  # our bump is on its way
            cache._versions.forget("another name")  # heard on the bus meanwhile
            fetcher = threading.Thread(
                target=lambda: fetches.append(cache._versions.get_or_guess(name)),
                name="fetcher",
            )
            fetcher.start()
            assert fetched.wait(5)
        return original_write(what, queue, **options)

    cache._tier.run = run  # type: ignore[method-assign]
    cache._write = write  # type: ignore[method-assign]
    try:
        cache.invalidate_namespace("users")
    finally:
        go_on.set()
        cache._tier.run = original_run  # type: ignore[method-assign]
        cache._write = original_write  # type: ignore[method-assign]
    assert until(lambda: len(fetches) == 1)
    assert users.get("k", "gone") == "gone"


def _held_on_a_write(reader: Cache, writer: Cache) -> threading.Event:
    """``writer`` sets ``item`` to "new", and ``reader``'s bus listener is held on that
    message (a listener thread the OS has not run yet) until the returned event is set."""
    held, release = threading.Event(), threading.Event()
    deliver = reader._bus._on_message  # type: ignore[union-attr]

    def slow(message: Any) -> None:
        if not held.is_set():
            held.set()
            release.wait(10)
        deliver(message)

    reader._bus._on_message = slow  # type: ignore[union-attr]
    writer.set("item", "new")
    assert held.wait(5)
    return release


def _old_copy_in_l1(reader: Cache, writer: Cache) -> None:
    """``reader`` holds ``item``, "old", in L1, the message of ``writer``'s write to it
    handed over already (it would drop the copy if it came later)."""
    reader.connect()
    writer.set("item", "old")
    assert until(lambda: reader.stats()["invalidations_received"] == 1)
    assert reader.get("item") == "old"


def test_a_version_fetched_ahead_of_the_bus_waits_for_what_came_before_it(
    make_cache: MakeCache,
) -> None:
    """Another process writes a key, then bumps a namespace; this process fetches the new
    version before its listener has handed over the write's message. A page built then
    from its L1 copy of the key, stored under the new version, would outlive the bump
    (every worker served it for the page's whole timeout): the fetch waits until the bus
    has handed over everything published before it."""
    reader, writer = make_cache(socket_timeout=2.0), make_cache()
    _old_copy_in_l1(reader, writer)
    release = _held_on_a_write(reader, writer)
    writer.invalidate_namespace("pages")
    threading.Timer(0.2, release.set).start()
    version, guessed = reader._versions.get_or_guess(encode_name("pages"))
    assert (version, guessed) == (writer._versions.get(encode_name("pages")), False)
    assert reader.get("item") == "new"


def test_a_version_the_bus_cannot_vouch_for_in_time_is_a_guess(make_cache: MakeCache) -> None:
    """The listener is held past the wait: the version is handed out as a guess (nothing
    stored under it) and not kept, so the next read fetches it again."""
    reader, writer = make_cache(socket_timeout=0.2), make_cache()
    reader.connect()
    release = _held_on_a_write(reader, writer)
    name = encode_name("pages")
    try:
        assert reader._versions.get_or_guess(name)[1] is True
        assert reader._versions.cached(name) is None
        assert reader.namespace("pages")._pinned().guessed
        assert reader.stats()["version_guesses"] == 2
    finally:
        release.set()
    assert until(lambda: reader._versions.get_or_guess(name)[1] is False)
    assert reader._versions.cached(name) is not None


@pytest.mark.parametrize("write", ["set", "delete", "set_many", "same process"])
def test_a_load_overtaken_by_a_write_does_not_store_what_it_read_before(
    make_cache: MakeCache, write: str
) -> None:
    """The cache-aside race: a loader reads its source, the source changes and a write
    (a delete, typically) reaches the cache, then the loader stores what it read before:
    every worker served the old value for its whole timeout. Now the write overtakes the
    load, which hands its value to its caller and stores nothing."""
    loading, writer = make_cache(), make_cache()
    if write == "same process":
        writer = loading
    source = {"item": "v1"}
    read, go_on = threading.Event(), threading.Event()
    got: list[Any] = []

    def load() -> str:
        value = source["item"]
        read.set()
        assert go_on.wait(5)
        return value

    loader = threading.Thread(target=lambda: got.append(loading.get_or_set("item", load)))
    loader.start()
    assert read.wait(5)
    source["item"] = "v2"
    if write == "delete":
        writer.delete("item")
    elif write == "set_many":
        writer.set_many({"item": "v2"})
    else:
        writer.set("item", "v2")
    go_on.set()
    loader.join(5)
    assert got == ["v1"]
    later = make_cache()
    assert later.get_or_set("item", lambda: source["item"]) == "v2"
    assert until(lambda: loading.get("item") == "v2")


@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_a_load_overtaken_by_a_delete_lets_the_next_miss_load_at_once(
    make_cache: MakeCache, r: redis.Redis, outcome: str
) -> None:
    """The write's mark is cleared by the overtaken loader, whether its loader returned
    or raised: a miss right after it locks and loads, rather than wait out the lock's
    timeout."""
    loading, writer, third = make_cache(), make_cache(), make_cache()
    read, go_on = threading.Event(), threading.Event()

    def load() -> str:
        read.set()
        assert go_on.wait(5)
        if outcome == "raises":
            raise TimeoutError("the database timed out")
        return "old"

    def call() -> None:
        with contextlib.suppress(TimeoutError):
            loading.get_or_set("item", load, lock_timeout=30)

    loader = threading.Thread(target=call)
    loader.start()
    assert read.wait(5)
    writer.delete("item")
    assert [v[:1] for v in r.mget(r.keys("*#lock"))] == [b"!"]
    go_on.set()
    loader.join(5)
    assert r.keys("*#lock") == []
    started = time.monotonic()
    assert third.get_or_set("item", lambda: "new", lock_timeout=30) == "new"
    assert time.monotonic() - started < 5
    assert third.get_or_set("item", lambda: "unused") == "new"


def test_a_loader_slower_than_its_lock_still_stores(make_cache: MakeCache, r: redis.Redis) -> None:
    """A lock that expired, and that no one took again, does not stop the store."""
    cache = make_cache()

    def load() -> str:
        time.sleep(0.3)
        return "slow"

    assert cache.get_or_set("item", load, lock_timeout=0.1) == "slow"
    assert make_cache().get("item") == "slow"
    assert r.keys("*#lock") == []


def test_a_loader_whose_lock_expired_leaves_the_next_holders_mark_alone(
    make_cache: MakeCache, r: redis.Redis
) -> None:
    """Loader A outlived its lock; B took it and read the source; a delete overtook B.
    A's store must neither store nor clear B's mark, or B, finding no lock, would store
    what it read before the delete."""
    from tiered_cache.flight import release, store_if_held

    cache = make_cache()
    gkey = cache._layout.data("", 0, "item")
    lock = KeyLayout.flight_lock(gkey)
    r.set(lock, b"token-b", px=30_000)
    cache.delete("item")  # overtakes B
    assert r.get(lock) == b"!token-b"
    pipe = r.pipeline()
    store_if_held(pipe, gkey, (lock, b"token-a"), b"from A", 60_000)
    release(pipe, lock, b"token-a")
    assert pipe.execute() == [0, 0]
    assert r.get(lock) == b"!token-b"
    pipe = r.pipeline()
    store_if_held(pipe, gkey, (lock, b"token-b"), b"from B", 60_000)
    assert pipe.execute() == [0]
    assert r.exists(gkey, lock) == 0


def test_what_is_built_under_a_version_the_bus_cannot_vouch_for_is_not_stored(
    make_cache: MakeCache,
) -> None:
    """A memoized function and a namespace's get_or_set, run while the listener is held
    past the wait, build from the L1 copy a message still on its way drops: they hand
    out what they built and store nothing under the new version (other workers would
    serve it until its timeout)."""
    reader, writer, other = make_cache(socket_timeout=0.2), make_cache(), make_cache()

    def page_of(cache: Cache) -> Callable[[], str]:
        def page() -> str:
            return "page of " + cache.get("item")

        return cache.memoize(namespace="pages")(page)  # one qualname: one result for both

    reader_page, other_page = page_of(reader), page_of(other)
    _old_copy_in_l1(reader, writer)
    release = _held_on_a_write(reader, writer)
    writer.invalidate_namespace("pages")
    try:
        assert reader_page() == "page of old"
        built = reader.namespace("pages").get_or_set("p", lambda: "built of " + reader.get("item"))
        assert built == "built of old"
    finally:
        release.set()
    assert other_page() == "page of new"
    assert other.namespace("pages").get_or_set("p", lambda: "built of new") == "built of new"


def test_a_listener_that_far_behind_costs_one_wait_not_one_a_read(make_cache: MakeCache) -> None:
    """Once a barrier went unheard, version reads are guesses at once (each would wait
    the whole timeout, and nothing is kept) until the listener hears a mark again."""
    reader, writer = make_cache(socket_timeout=0.3), make_cache()
    reader.connect()
    release = _held_on_a_write(reader, writer)
    try:
        started = time.monotonic()
        assert reader._versions.get_or_guess("first")[1] is True
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        assert [reader._versions.get_or_guess(f"n{i}")[1] for i in range(10)] == [True] * 10
        assert time.monotonic() - started < 0.3
    finally:
        release.set()
    assert until(lambda: reader._versions.get_or_guess("later")[1] is False)


def test_a_version_is_read_from_a_redis_that_takes_no_writes(l1_backend: str) -> None:
    """A read-only replica (a demoted master in a failover, say) answers GET but refuses
    SET: reading a counter that exists sends no write, or every version read would fail
    there, as an outage."""
    from tests.redis_harness import RedisServer

    with RedisServer() as primary, RedisServer() as replica:
        Cache(redis_url=primary.url).invalidate_namespace("pages")
        counter = KeyLayout("tc", 1).counter(encode_name("pages"))
        version = int(primary.client().get(counter))
        with replica.client() as client:
            client.replicaof(primary.host, primary.port)
            assert until(lambda: client.get(counter) == str(version).encode(), timeout=10)
        reader = Cache(redis_url=replica.url, fail_open=False, l1_backend=l1_backend)
        try:
            assert reader._versions.get_or_guess(encode_name("pages")) == (version, False)
        finally:
            reader.close()


def test_a_version_read_twice_waits_for_its_second_mark(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter that does not exist yet takes two reads, each followed by a mark. The
    first mark heard says nothing of what was published before the second read (another
    worker's write, then the namespace's first bump): the read waits for the second."""
    from tiered_cache import versions

    reader, writer = make_cache(socket_timeout=2.0), make_cache()
    _old_copy_in_l1(reader, writer)
    then_mark = versions._then_mark
    reads: list[Any] = []

    def between_the_reads(client: Any, barrier: Any, queue: Any) -> Any:
        results = then_mark(client, barrier, queue)
        reads.append(results)
        if len(reads) == 1 and results[0] is None:  # the counter does not exist yet
            assert barrier.passed(2)  # the first mark is heard...
            release = _held_on_a_write(reader, writer)  # ...then another worker writes
            writer.invalidate_namespace("pages")  # and bumps
            threading.Timer(0.2, release.set).start()
        return results

    monkeypatch.setattr(versions, "_then_mark", between_the_reads)
    version, guessed = reader._versions.get_or_guess(encode_name("pages"))
    assert len(reads) == 2
    assert (version, guessed) == (writer._versions.get(encode_name("pages")), False)
    assert reader.get("item") == "new"


def test_the_worker_that_bumps_a_namespace_waits_for_the_bus_too(make_cache: MakeCache) -> None:
    """Another worker's write, published before our INCR and not yet handed over, still
    leaves its L1 copy: a page built under the version we just made would outlive the
    bump. The bump waits for its mark, as a read does."""
    bumper, writer = make_cache(socket_timeout=2.0), make_cache()
    _old_copy_in_l1(bumper, writer)
    release = _held_on_a_write(bumper, writer)
    threading.Timer(0.2, release.set).start()
    version = bumper.invalidate_namespace("pages")
    assert bumper._versions.cached(encode_name("pages")) == version
    assert bumper.get("item") == "new"


def test_a_bump_the_bus_cannot_vouch_for_in_time_is_not_kept(make_cache: MakeCache) -> None:
    """The listener is held past the wait: the bump's version is not kept, and the next
    read fetches it behind a mark of its own."""
    bumper, writer = make_cache(socket_timeout=0.2), make_cache()
    bumper.connect()
    release = _held_on_a_write(bumper, writer)
    try:
        assert bumper.invalidate_namespace("pages") > 0
        assert bumper._versions.cached(encode_name("pages")) is None
    finally:
        release.set()


def _first_command_end(data: bytes) -> int:
    """Where the first command of a packed pipeline ends (RESP: an array of bulk strings)."""
    end = data.index(b"\r\n")
    at = end + 2
    for _ in range(int(data[1:end])):
        end = data.index(b"\r\n", at)
        at = end + 2 + int(data[at + 1 : end]) + 2
    return at


@pytest.mark.parametrize("write", ["set", "delete"])
def test_a_load_stored_between_a_write_and_its_mark_is_still_overtaken(
    make_cache: MakeCache, redis_url: str, write: str
) -> None:
    """Redis may run a pipeline's commands over several turns of its event loop (a TCP
    segment boundary, a large value read in parts), and a loader's store between them.
    The mark goes first: a store after it, whatever comes between, stores nothing."""
    split: list[Callable[[], None]] = []

    class SplitAfterFirst(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            data = b"".join(bytes(chunk) for chunk in command)
            cut = _first_command_end(data)
            if not split or cut == len(data):  # (a connection's handshake, say)
                return super().send_packed_command(command, check_health)
            super().send_packed_command([data[:cut]], check_health)
            time.sleep(0.05)  # Redis runs the first command
            split.pop()()  # the loader stores
            super().send_packed_command([data[cut:]], False)
            return None

    pool = redis.ConnectionPool.from_url(redis_url, connection_class=SplitAfterFirst)
    writer = Cache(redis=redis.Redis(connection_pool=pool))
    writer.connect()  # its bus subscribed: the next command sent is the write's pipeline
    loading = make_cache()
    read, go_on, done = threading.Event(), threading.Event(), threading.Event()

    def load() -> str:
        read.set()
        assert go_on.wait(5)
        return "read before the update"

    def call() -> None:
        loading.get_or_set("item", load)
        done.set()

    threading.Thread(target=call).start()
    assert read.wait(5)
    split.append(lambda: (go_on.set(), done.wait(5)))
    try:
        if write == "set":
            assert writer.set("item", "the update")
        else:
            writer.delete("item")
        assert done.is_set()
        expected = "the update" if write == "set" else "absent"
        assert make_cache().get("item", "absent") == expected
    finally:
        writer.close()


def test_a_foreign_key_at_a_lock_does_not_fail_writes(
    make_cache: MakeCache, r: redis.Redis
) -> None:
    """Another type at a key's lock (foreign data under our prefix): the mark leaves it
    alone, and the write it rides with goes through."""
    cache = make_cache(fail_open=False)
    lock = KeyLayout.flight_lock(cache._layout.data("", 0, "item"))
    r.rpush(lock, b"foreign")
    assert cache.set("item", 1)
    assert cache.delete("item") == 1
    assert r.lrange(lock, 0, -1) == [b"foreign"]


def test_a_late_answer_to_an_earlier_mark_does_not_pass_the_next(make_cache: MakeCache) -> None:
    """The listener finds the first mark's token, the read publishes its second mark,
    then the listener ends the first: the second is still unheard."""
    cache = make_cache()
    cache.connect()
    with cache._bus.barrier() as barrier:
        assert barrier is not None
        barrier.publish(_Nowhere())
        first = cache._bus._marks[barrier.token]  # the listener looks the token up...
        barrier.publish(_Nowhere())  # ...the read publishes its second mark...
        first.end(passed=True)  # ...and the listener ends the first
        assert barrier.passed(0.0) is False


class _Nowhere:
    """A publish target that sends nothing."""

    def publish(self, channel: str, message: bytes) -> None:
        pass


def test_a_version_read_while_the_bus_reconnects_is_a_guess(
    redis_server: RedisServer, l1_backend: str
) -> None:
    """Messages published while this worker's subscription is down are missed, and its
    L1 copies stay trusted for l1_disconnected_ttl: a version read then may be newer
    than what they say, and what is built under it must not be stored (it would
    outlive the reconnect's flush, in Redis, for its whole timeout)."""
    from redis.backoff import ConstantBackoff

    reader = Cache(redis_url=redis_server.url, l1_backend=l1_backend)
    writer = Cache(redis_url=redis_server.url, l1_backend=l1_backend)
    try:
        page = reader.memoize(namespace="pages")(lambda: "page of " + reader.get("item"))
        _old_copy_in_l1(reader, writer)
        reader._bus._backoff = ConstantBackoff(30)  # type: ignore[union-attr]
        assert redis_server.kill_pubsub_clients() >= 1
        assert until(lambda: not reader._bus.connected)
        writer.set("item", "new")  # missed
        writer.invalidate_namespace("pages")
        assert reader._versions.get_or_guess(encode_name("pages"))[1] is True
        assert page() == "page of old"  # served (bounded by its L1 age), not stored
        assert reader._versions.cached(encode_name("pages")) is None
        with redis_server.client() as client:
            assert client.exists(page.memo.redis_key((), {})) == 0
    finally:
        reader.close()
        writer.close()


def test_with_l1_off_a_version_read_while_the_bus_reconnects_is_no_guess(
    redis_server: RedisServer,
) -> None:
    """The barrier protects L1 copies: with L1 off there are none, every read goes to
    Redis, and what is built while the subscription is down is stored as ever."""
    from redis.backoff import ConstantBackoff

    reader = Cache(redis_url=redis_server.url, l1_max_items=0)
    try:
        calls: list[int] = []
        page = reader.memoize(namespace="pages")(lambda: calls.append(1) or len(calls))
        reader.connect()
        reader._bus._backoff = ConstantBackoff(30)  # type: ignore[union-attr]
        assert redis_server.kill_pubsub_clients() >= 1
        assert until(lambda: not reader._bus.connected)
        assert reader._versions.get_or_guess(encode_name("pages"))[1] is False
        assert [page(), page(), page()] == [1, 1, 1]
    finally:
        reader.close()


def test_a_closed_caches_versions_are_no_guesses(make_cache: MakeCache) -> None:
    """A closed cache's listener is stopped for good: its version reads are trusted for
    l1_disconnected_ttl, as before the listener started, not guesses for ever."""
    cache = make_cache()
    cache.connect()
    cache.close()
    assert cache._versions.get_or_guess(encode_name("pages"))[1] is False


def test_a_version_read_is_kept_though_another_name_was_forgotten_meanwhile(
    make_cache: MakeCache,
) -> None:
    """A bump of another namespace heard while a read waits for its mark does not void
    the read: the next request would read (and wait) again, for nothing."""
    cache = make_cache()
    cache.connect()
    original = cache._tier.run

    def run(what: str, call: Callable[[Any], Any], **options: Any) -> Any:
        result = original(what, call, **options)
        if what == "namespace version":
            cache._versions.forget(encode_name("other"))  # heard meanwhile
        return result

    cache._tier.run = run  # type: ignore[method-assign]
    try:
        version = cache._versions.get(encode_name("pages"))
    finally:
        cache._tier.run = original  # type: ignore[method-assign]
    assert cache._versions.cached(encode_name("pages")) == version


def test_forgetting_names_heard_on_the_bus_keeps_no_state_a_name(make_cache: MakeCache) -> None:
    """Every bus message's namespaces are forgotten, used here or not (per-entity
    namespaces: one a user): what a fetch in flight checks must not grow with them."""
    cache = make_cache()
    before = len(cache._versions._forgotten)
    for i in range(5_000):
        cache._versions.forget(f"user:{i}")
    assert len(cache._versions._forgotten) == before


@pytest.mark.parametrize("held", [False, True], ids=["absent", "present"])
def test_an_add_overtakes_a_load_only_when_it_stores(
    make_cache: MakeCache, r: redis.Redis, held: bool
) -> None:
    """A refused add changed nothing: a load in flight (a stale value's refresh, say)
    still stores. An add that stored overtakes it, as any write does."""
    cache = make_cache()
    gkey = cache._layout.data("", 0, "item")
    lock = KeyLayout.flight_lock(gkey)
    if held:
        r.set(gkey, b"a value: the add is refused")
    r.set(lock, b"token", px=30_000)
    assert cache.add("item", "added") is not held
    assert r.get(lock) == (b"token" if held else b"!token")
