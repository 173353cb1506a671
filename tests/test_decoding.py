"""Bytes under our keys that do not decode are a miss, counted and logged; never code.

SPEC section 2, "Safe decoding": whatever sits in Redis under a cache key may be foreign
(another program, Flask-Caching), truncated, written with another serializer, unsigned or
signed with another key, or hostile. Every read path (get, get_many, get_or_set, has)
treats such bytes as a miss: get_or_set runs its loader, ``stats()["decode_errors"]``
counts them, a rate-limited warning goes to the ``tiered_cache`` logger, and nothing in
the bytes is ever executed.

Also here: counters written by ``incr`` read back as ints, the pickle serializer's need
for a secret key, a msgpack round trip, and the L1 copy policy (mutating a value that was
handed out never changes the cached one).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.waiting import until
from tiered_cache import MISS, Cache, ConfigurationError
from tiered_cache.framing import HEADER_SIZE, MAGIC, pack
from tiered_cache.serializers import make_serializer

SECRET = "decoding-tests-secret"
OTHER_SECRET = "somebody-elses-secret"
TAGS = {"json": 1, "msgpack": 2, "pickle": 3}


def _plant(path: str) -> None:
    """What a hostile pickle asks the unpickler to call."""
    Path(path).write_text("code ran")


class Hostile:
    """Unpickling this calls _plant(path): stands in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_plant, (str(self.path),))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), "bytes read from Redis ran code"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the shared server, to write bytes behind the cache's back."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _frame(serializer: str, value: Any, ttl: float = 300.0) -> bytes:
    """The bytes a cache with ``serializer`` stores for ``value``."""
    payload = make_serializer(serializer, secret_key=SECRET).dumps(value)
    return pack(TAGS[serializer], time.time() + ttl, 0.0, payload)


def _key(cache: Cache, key: str) -> str:
    return cache._layout.data("", 0, key)


GOOD = {"name": "value", "items": [1, 2, {"deep": [True, None]}], "n": 1.5}


def _bad_bytes(serializer: str, marker: Path) -> dict[str, bytes]:
    """Undecodable bytes for a cache configured with ``serializer``, by description."""
    good = _frame(serializer, GOOD)
    hostile_pickle = pickle.dumps(Hostile(marker), protocol=5)
    fresh = time.time() + 300
    cases = {
        "empty": b"",
        "garbage": b"\x00\xffnot a cache value\xfe",
        "all-bytes": bytes(range(256)),
        "text": b"hello world",
        "magic-only": MAGIC,
        "unknown-tag": pack(9, fresh, 0.0, b'"x"'),
        "flags-set": struct.pack("!3sBBdf", MAGIC, TAGS[serializer], 1, fresh, 0.0) + b"1",
        "nan-fresh-until": pack(TAGS[serializer], float("nan"), 0.0, good[HEADER_SIZE:]),
        "nan-delta": pack(TAGS[serializer], fresh, float("nan"), good[HEADER_SIZE:]),
        "empty-payload": pack(TAGS[serializer], fresh, 0.0, b""),
        "flask-caching-pickle": b"!" + pickle.dumps({"a": 1}),
        "flask-caching-hostile": b"!" + hostile_pickle,
        "bare-hostile-pickle": hostile_pickle,
        "unsigned-hostile-pickle-frame": pack(3, fresh, 0.0, hostile_pickle),
        "zero-signed-hostile-pickle-frame": pack(3, fresh, 0.0, bytes(32) + hostile_pickle),
        "hostile-pickle-signed-with-other-key": pack(
            3, fresh, 0.0, make_serializer("pickle", secret_key=OTHER_SECRET).dumps(Hostile(marker))
        ),
        "short-pickle-frame": pack(3, fresh, 0.0, b"\x80\x05N."),
    }
    # Cut a valid value at many lengths, inside the 17-byte header and inside the payload.
    # (GOOD is a dict, so no strict prefix of its payload is a complete value.)
    for length in (1, 2, 3, 4, 5, 10, 16, 17, 18, 20, len(good) // 2, len(good) - 1):
        cases[f"truncated-{length}"] = good[:length]
    others = [name for name in TAGS if name != serializer]
    for other in others:
        if other == "pickle":
            # Signed with our own secret, but this cache is not a pickle cache.
            cases["signed-pickle-frame"] = _frame("pickle", GOOD)
        else:
            cases[f"{other}-frame"] = _frame(other, GOOD)
    if serializer == "json":
        cases["invalid-utf8"] = pack(1, fresh, 0.0, b'"\xff\xfe"')
        cases["too-deep"] = pack(1, fresh, 0.0, b"[" * 100_000 + b"]" * 100_000)
        cases["trailing-garbage"] = pack(1, fresh, 0.0, b'{"a": 1} trailing')
        cases["int-too-long"] = pack(1, fresh, 0.0, b"1" * 5000)
    if serializer == "msgpack":
        cases["msgpack-extra-data"] = good + b"\xc0"
        cases["msgpack-reserved-byte"] = pack(2, fresh, 0.0, b"\xc1")
        cases["msgpack-huge-array"] = pack(2, fresh, 0.0, b"\xdd\xff\xff\xff\xff")
        cases["msgpack-huge-str"] = pack(2, fresh, 0.0, b"\xdb\xff\xff\xff\xff")
    if serializer == "pickle":
        good_payload = good[HEADER_SIZE:]
        flipped = bytes([good_payload[-2] ^ 1])
        cases["tampered-signed-pickle"] = pack(
            3, fresh, 0.0, good_payload[:-2] + flipped + good_payload[-1:]
        )
    return cases


SERIALIZERS = ["json", "msgpack", "pickle"]


def _check_case(cache: Cache, peer: Cache, raw: redis.Redis, name: str, data: bytes) -> None:
    """Every read path treats ``data`` under key ``name`` as a miss."""
    bad, good = f"bad-{name}", f"good-{name}"
    raw.set(_key(cache, good), _frame(cache.config.serializer, GOOD))
    raw.set(_key(cache, bad), data)
    errors = cache.stats()["decode_errors"]

    assert cache.get(bad) is None
    assert cache.get(bad, MISS) is MISS
    assert cache.get(bad, "dflt") == "dflt"
    assert cache.stats()["decode_errors"] == errors + 3
    assert cache.get_many(bad, good, "absent", default="d") == ["d", GOOD, "d"]
    assert cache.stats()["decode_errors"] == errors + 4
    assert cache.has(bad) is False
    assert cache.stats()["decode_errors"] == errors + 5
    l1_items = cache.stats()["l1_items"]
    assert cache.get(good) == GOOD
    assert cache.get(bad, MISS) is MISS  # nothing of the bad value went into L1
    assert cache.stats()["l1_items"] == l1_items

    calls: list[int] = []

    def loader() -> dict[str, Any]:
        calls.append(1)
        return {"loaded": name}

    assert cache.get_or_set(bad, loader) == {"loaded": name}
    assert calls == [1]
    assert cache.stats()["decode_errors"] >= errors + 6
    # The loader's value replaced the bad bytes, in L1 and in Redis.
    assert cache.get(bad) == {"loaded": name}
    assert peer.get(bad) == {"loaded": name}

    # Another cache meeting bad bytes first through has() and get_or_set().
    other = f"bad2-{name}"
    raw.set(_key(cache, other), data)
    peer_errors = peer.stats()["decode_errors"]
    assert peer.has(other) is False
    assert peer.get_or_set(other, lambda: [1, 2]) == [1, 2]
    assert peer.stats()["decode_errors"] >= peer_errors + 2


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_undecodable_bytes_are_a_miss_on_every_read_path(
    serializer: str,
    make_cache: Callable[..., Cache],
    raw: redis.Redis,
    marker: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tiered_cache")
    cache = make_cache(serializer=serializer, secret_key=SECRET)
    peer = make_cache(serializer=serializer, secret_key=SECRET)
    cases = _bad_bytes(serializer, marker)
    assert len(cases) > 25

    failed: dict[str, str] = {}
    for name, data in cases.items():
        try:
            _check_case(cache, peer, raw, name, data)
        except Exception as exc:  # collect: one report names every failing case
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert failed == {}
    assert not marker.exists(), "bytes read from Redis ran code"

    # Hundreds of undecodable reads, yet only a warning or so per cache (rate-limited).
    assert cache.stats()["decode_errors"] >= 6 * len(cases)
    warnings = [r for r in caplog.records if r.name == "tiered_cache"]
    assert all("undecodable" in r.getMessage() for r in warnings), [
        r.getMessage() for r in warnings
    ]
    assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]


@pytest.mark.parametrize("fail_open", [True, False])
def test_foreign_redis_types_are_a_miss_not_an_outage(
    fail_open: bool, make_cache: Callable[..., Cache], raw: redis.Redis
) -> None:
    """A list or hash under our key (foreign data, not bytes) is a miss like any other.

    Redis answered (WRONGTYPE): it is healthy, so this must neither count towards the
    circuit breaker, which would take the whole cache down because of one key, nor raise
    CacheUnavailable when failing closed.
    """
    cache = make_cache(breaker_failures=3, breaker_reset=30.0, fail_open=fail_open)
    peer = make_cache()
    raw.rpush(_key(cache, "list"), b"a", b"b")
    raw.hset(_key(cache, "hash"), "f", "v")
    for key in ("list", "hash"):
        assert cache.get_many(key, "absent") == [None, None]
    for _ in range(5):  # a hot key read again and again: consecutive answers from Redis
        assert cache.get("list", MISS) is MISS
    for _ in range(5):
        assert cache.has("hash") is False
    stats = cache.stats()
    assert stats["breaker_open"] is False, stats
    # Redis is fine, and so must the rest of the cache be.
    assert peer.set("elsewhere", 1) is True
    assert cache.get("elsewhere") == 1
    # Like undecodable bytes, the foreign value is replaced by the loader's.
    assert cache.get_or_set("list", lambda: "loaded") == "loaded"
    assert peer.get("list") == "loaded"


def test_decode_warnings_are_rate_limited(
    make_cache: Callable[..., Cache], raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    caplog.set_level(logging.WARNING, logger="tiered_cache")
    for i in range(50):
        raw.set(_key(cache, f"bad{i}"), b"\x00garbage")
    for i in range(50):
        assert cache.get(f"bad{i}", MISS) is MISS
    assert cache.get_many(*(f"bad{i}" for i in range(50)), default=0) == [0] * 50
    assert cache.stats()["decode_errors"] == 100
    records = [r for r in caplog.records if r.name == "tiered_cache"]
    assert 1 <= len(records) <= 3, [r.getMessage() for r in records]
    assert all(r.levelno == logging.WARNING for r in records)
    assert "bad" in records[0].getMessage()


def test_hostile_pickle_is_live(tmp_path: Path) -> None:
    """The hostile payload really runs code when unpickled naively (so the tests mean it)."""
    path = tmp_path / "naive"
    pickle.loads(pickle.dumps(Hostile(path)))
    assert path.exists()


def test_signed_pickle_round_trips(make_cache: Callable[..., Cache], marker: Path) -> None:
    writer = make_cache(serializer="pickle", secret_key=SECRET)
    reader = make_cache(serializer="pickle", secret_key=SECRET)
    value = {"set": {1, 2}, "tuple": (1, "a"), "bytes": b"\x00", 3: [1.5]}
    assert writer.set("p", value) is True
    assert reader.get("p") == value
    other_key = make_cache(serializer="pickle", secret_key=OTHER_SECRET)
    assert other_key.get("p", MISS) is MISS
    assert other_key.stats()["decode_errors"] == 1


def _must_not_load() -> Any:
    """A loader for values that are in the cache: running it fails the test."""
    pytest.fail("the loader ran although the value was cached")


# -- counters ----------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_incr_counters_read_back_as_int(
    serializer: str, make_cache: Callable[..., Cache], raw: redis.Redis
) -> None:
    cache = make_cache(serializer=serializer, secret_key=SECRET)
    other = make_cache(serializer=serializer, secret_key=SECRET)
    assert cache.incr("n") == 1
    assert cache.incr("n", 4) == 5
    value = cache.get("n")
    assert value == 5 and type(value) is int
    assert cache.incr("n") == 6
    assert cache.get("n") == 6  # its own incr dropped the L1 copy
    assert cache.get_many("n", "absent") == [6, None]
    assert cache.has("n") is True
    assert cache.get_or_set("n", _must_not_load) == 6
    assert other.get("n") == 6
    assert cache.incr("neg", -3) == -3
    assert other.get("neg") == -3
    assert raw.get(_key(cache, "n")) == b"6"
    assert cache.stats()["decode_errors"] == 0


def test_a_counter_read_is_never_held_in_l1(
    make_cache: Callable[..., Cache], raw: redis.Redis
) -> None:
    """SPEC 1: ``incr`` is an L2 counter, never held in L1. Redis expires a counter (a
    failed-login window) without a word on the bus: a worker that held its read would
    go on serving it for ``l1_ttl``."""
    cache = make_cache(default_timeout=0.3)
    assert cache.incr("n") == 1
    assert cache.get("n") == 1 and cache.get_many("n") == [1] and cache.has("n")
    assert cache._l1_value("n") is MISS
    assert until(lambda: raw.exists(_key(cache, "n")) == 0, timeout=5)
    assert (cache.get("n"), cache.has("n")) == (None, False)


@dataclasses.dataclass
class Blob:
    """An object that is no container: its bytes hide from ``getsizeof`` of its shell."""

    data: str


def test_an_unpickled_object_is_charged_its_bytes_in_l1(make_cache: Callable[..., Cache]) -> None:
    """The byte budget charges a value at least its serialized size: an object's shell
    looked like 50 bytes, and 50 MB sat in L1 under a budget of 1 MB."""
    budget = 1_000_000
    cache = make_cache(serializer="pickle", secret_key=SECRET, l1_max_bytes=budget)
    reader = make_cache(serializer="pickle", secret_key=SECRET, l1_max_bytes=budget)
    for i in range(20):
        assert cache.set(f"blob-{i}", Blob("x" * 100_000))
        assert reader.get(f"blob-{i}") == Blob("x" * 100_000)
    for one in (cache, reader):
        stats = one.stats()
        assert stats["l1_bytes"] <= budget, stats
        assert stats["l1_items"] * 100_000 <= budget, stats


# -- configuration and round trips -------------------------------------------------------


def test_pickle_without_secret_key_is_refused(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERED_CACHE_SECRET_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_SECRET_KEY"):
        Cache(redis_url=redis_url, serializer="pickle")
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_SECRET_KEY"):
        Cache(redis_url=redis_url, serializer="pickle", secret_key="")


def test_msgpack_round_trip(make_cache: Callable[..., Cache]) -> None:
    writer = make_cache(serializer="msgpack")
    reader = make_cache(serializer="msgpack")
    value = {
        "s": "text",
        "b": b"\x00\xff",
        "i": -(2**63),
        "f": 0.25,
        "l": [1, [2, None]],
        "t": True,
    }
    assert writer.set("m", value) is True
    assert writer.get("m") == value
    assert reader.get("m") == value
    assert reader.get_many("m", "absent") == [value, None]
    assert reader.get_or_set("m2", lambda: value) == value
    assert writer.get("m2") == value
    assert writer.stats()["decode_errors"] == reader.stats()["decode_errors"] == 0


def test_json_cache_cannot_read_msgpack_cache_values(make_cache: Callable[..., Cache]) -> None:
    msgpack_cache = make_cache(serializer="msgpack")
    json_cache = make_cache()
    assert msgpack_cache.set("k", {"a": 1}) is True
    assert json_cache.get("k", MISS) is MISS
    assert json_cache.stats()["decode_errors"] == 1


# -- the L1 copy policy ------------------------------------------------------------------


def _nested() -> dict[str, Any]:
    return {"list": [1, 2, {"inner": ["a", "b"]}], "dict": {"x": {"y": [0]}}, "s": "t"}


def _mutate(value: Any) -> None:
    """Change every container reachable from ``value``."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _mutate(item)
        value["added"] = "mutated"
    elif isinstance(value, list):
        for item in value:
            _mutate(item)
        value.append("mutated")
    elif isinstance(value, set):
        value.add("mutated")


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_mutating_a_returned_value_never_changes_the_cache(
    serializer: str, make_cache: Callable[..., Cache]
) -> None:
    writer = make_cache(serializer=serializer, secret_key=SECRET)
    reader = make_cache(serializer=serializer, secret_key=SECRET)
    expected = _nested()

    original = _nested()
    assert writer.set("k", original) is True
    _mutate(original)  # the caller's own object, after set
    for cache in (writer, reader):  # set in this process / read from Redis
        for _ in range(3):
            got = cache.get("k")
            assert got == expected
            _mutate(got)
        many = cache.get_many("k", "k")
        assert many == [expected, expected]
        _mutate(many[0])
        assert many[1] == expected  # two results never share parts either
        _mutate(many[1])
        got = cache.get_or_set("k", _must_not_load)
        assert got == expected
        _mutate(got)
        assert cache.get("k") == expected
    assert reader.stats()["l1_hits"] > 0 and writer.stats()["l1_hits"] > 0

    loaded = _nested()
    returned = reader.get_or_set("loaded", lambda: loaded)
    _mutate(returned)
    _mutate(loaded)
    assert reader.get("loaded") == expected
    assert writer.get("loaded") == expected

    ns = reader.namespace("ns")
    assert ns.set("k", _nested()) is True
    got = ns.get("k")
    _mutate(got)
    assert ns.get("k") == expected
    assert writer.namespace("ns").get("k") == expected


def test_mutating_pickled_objects_never_changes_the_cache(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache(serializer="pickle", secret_key=SECRET)
    value = {"tags": {"a", "b"}, "pair": ([1], [2])}
    assert cache.set("obj", value) is True
    got = cache.get("obj")
    got["tags"].add("c")
    got["pair"][0].append(9)
    assert cache.get("obj") == {"tags": {"a", "b"}, "pair": ([1], [2])}


def test_values_nested_deeper_than_deepcopy_goes_are_read_and_copied(
    make_cache: Callable[..., Cache], raw: redis.Redis
) -> None:
    # json decodes about a thousand levels, copy.deepcopy about five hundred: a value in
    # between, planted or set, is read from Redis and from L1 like any other.
    cache = make_cache()
    depth = 800
    raw.set(_key(cache, "planted"), pack(1, time.time() + 300, 0.0, b"[" * depth + b"]" * depth))
    for _ in range(2):  # from Redis, then from L1
        got = cache.get("planted")
        for _ in range(depth - 1):
            assert type(got) is list and len(got) == 1
            got = got[0]
        assert got == []
        got.append("changed")  # the innermost list of this reader's copy
    assert cache.stats()["l1_hits"] == 1
    assert cache.stats()["decode_errors"] == 0
