"""``/_tiered_cache/{health,stats,metrics}`` and the per-worker stats publisher."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.flask_apps import close_app
from tests.procs import GroupSync, ProcessGroup, run_in_processes
from tests.redis_harness import HOST, RedisServer, free_port
from tests.waiting import until
from tiered_cache import metrics
from tiered_cache.endpoints import publisher_of
from tiered_cache.flask_ext import TieredCache

MakeApp = Callable[..., tuple[Flask, TieredCache]]


def build_app(name: str, url: str, **config: Any) -> tuple[Flask, TieredCache]:
    app = Flask(name)
    app.config.update(TIERED_CACHE_REDIS_URL=url, TIERED_CACHE_ENDPOINTS=True)
    app.config.update(config)
    tc = TieredCache(app)

    @app.get("/")
    def index() -> str:
        return str(tc.get("x"))

    return app, tc


@pytest.fixture
def app_factory() -> Iterator[Callable[..., tuple[Flask, TieredCache]]]:
    made: list[Flask] = []

    def make(url: str, name: str = "app", **config: Any) -> tuple[Flask, TieredCache]:
        app, tc = build_app(name, url, **config)
        made.append(app)
        return app, tc

    yield make
    for app in made:
        close_app(app)


@pytest.fixture
def make_app(app_factory: Callable[..., tuple[Flask, TieredCache]], redis_url: str) -> MakeApp:
    return lambda **config: app_factory(redis_url, **config)


def stats_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tiered_cache-stats" and t.is_alive()]


# -- health --------------------------------------------------------------------------


def test_health_ok(make_app: MakeApp) -> None:
    app, _ = make_app()
    response = app.test_client().get("/_tiered_cache/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["redis"]["ok"] is True
    assert 0 <= body["redis"]["latency_ms"] < 1000
    assert body["breaker_open"] is False
    assert set(body) >= {"bus_connected", "l1_items"}
    assert "no-store" in response.headers["Cache-Control"]


def test_health_503_quickly_when_redis_is_killed(
    app_factory: Callable[..., tuple[Flask, TieredCache]], redis_server: RedisServer
) -> None:
    app, _ = app_factory(redis_server.url, TIERED_CACHE_BREAKER_FAILURES=3)
    client = app.test_client()
    assert client.get("/_tiered_cache/health").status_code == 200
    redis_server.kill()
    for _ in range(5):  # before and after the breaker opens
        started = time.perf_counter()
        response = client.get("/_tiered_cache/health")
        assert time.perf_counter() - started < 0.25 * 4 + 0.5
        assert response.status_code == 503
        assert response.get_json()["redis"]["ok"] is False
    assert response.get_json()["breaker_open"] is True
    assert response.get_json()["status"] == "unavailable"


def test_health_503_within_a_socket_timeout_when_redis_hangs(
    app_factory: Callable[..., tuple[Flask, TieredCache]], redis_server: RedisServer
) -> None:
    app, _ = app_factory(redis_server.url, TIERED_CACHE_SOCKET_TIMEOUT=0.2)
    client = app.test_client()
    assert client.get("/_tiered_cache/health").status_code == 200
    redis_server.pause()
    try:
        started = time.perf_counter()
        assert client.get("/_tiered_cache/health").status_code == 503
        assert time.perf_counter() - started < 0.2 * 4 + 0.5
    finally:
        redis_server.resume()


def test_health_503_while_the_breaker_is_open(
    app_factory: Callable[..., tuple[Flask, TieredCache]], redis_server: RedisServer
) -> None:
    app, _ = app_factory(redis_server.url, TIERED_CACHE_BREAKER_RESET=30)
    cache = TieredCache.state(app).cache
    redis_server.kill()
    for _ in range(5):
        cache.get("k")
    redis_server.start()  # Redis is back, but the breaker still refuses for a while
    response = app.test_client().get("/_tiered_cache/health")
    assert response.status_code == 503
    assert response.get_json()["breaker_open"] is True
    assert "breaker" in response.get_json()["redis"]["error"]


def test_health_503_while_redis_refuses_writes(
    app_factory: Callable[..., tuple[Flask, TieredCache]], redis_server: RedisServer
) -> None:
    """A replica answers PING but refuses every write (READONLY): a PING said "ok", and
    each one closed the breaker those refusals opened, so the worker kept trying."""
    app, _ = app_factory(
        redis_server.url, TIERED_CACHE_BREAKER_FAILURES=3, TIERED_CACHE_BREAKER_RESET=0.5
    )
    client = app.test_client()
    assert client.get("/_tiered_cache/health").status_code == 200
    admin = redis.Redis(port=redis_server.port)
    admin.replicaof(HOST, free_port())  # a master that is not there: read-only from now
    try:
        answers = [client.get("/_tiered_cache/health") for _ in range(4)]
        assert [a.status_code for a in answers] == [503] * 4
        assert "read only replica" in answers[0].get_json()["redis"]["error"]
        assert "breaker" in answers[-1].get_json()["redis"]["error"]
        assert answers[-1].get_json()["breaker_open"] is True
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()
    assert until(lambda: client.get("/_tiered_cache/health").status_code == 200, timeout=5)


# -- tokens, caching, switches --------------------------------------------------------

ENDPOINTS = ("/_tiered_cache/health", "/_tiered_cache/stats", "/_tiered_cache/metrics")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_token_required(make_app: MakeApp, path: str) -> None:
    app, _ = make_app(TIERED_CACHE_ENDPOINTS_TOKEN="s3cret")
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
        assert response.get_json() == {"error": "unauthorized"}
        assert "no-store" in response.headers["Cache-Control"]
    response = client.get(path, headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]


def test_no_token_no_challenge(make_app: MakeApp) -> None:
    app, _ = make_app()
    assert app.test_client().get("/_tiered_cache/stats").status_code == 200


def test_endpoints_off_by_default(make_app: MakeApp) -> None:
    app, _ = make_app(TIERED_CACHE_ENDPOINTS=False)
    client = app.test_client()
    for path in ENDPOINTS:
        assert client.get(path).status_code == 404
    assert client.get("/").status_code == 200
    # The publisher runs anyway: the CLI reads what workers publish.
    assert publisher_of(TieredCache.state(app)).running  # type: ignore[union-attr]


# -- stats from several workers -------------------------------------------------------


def test_stats_shows_every_worker_and_totals(make_app: MakeApp) -> None:
    first, tc1 = make_app()
    second, _ = make_app()
    with first.app_context():
        tc1.set("x", 1)
    second.test_client().get("/")  # starts the second worker's publisher; an L1 miss + L2 hit
    second.test_client().get("/")  # an L1 hit
    publisher_of(TieredCache.state(second)).publish()  # type: ignore[union-attr] # not in 5 s
    body = first.test_client().get("/_tiered_cache/stats").get_json()
    assert body["complete"] is True
    workers = body["workers"]
    assert len(workers) == 2
    assert sum(w["this_process"] for w in workers) == 1
    assert {w["pid"] for w in workers} == {os.getpid()}
    assert {w["host"] for w in workers} == {publisher_of(TieredCache.state(first)).host}  # type: ignore[union-attr]
    other = next(w for w in workers if not w["this_process"])
    assert other["stats"]["l1_hits"] == 1 and other["stats"]["l2_hits"] == 1
    totals = body["totals"]
    assert totals["workers"] == 2
    assert totals["l1_hits"] == sum(w["stats"]["l1_hits"] for w in workers)
    assert totals["bus_connected"] == sum(w["stats"]["bus_connected"] for w in workers)
    assert 0 < totals["hit_ratio"] <= 1


def worker(sync: GroupSync, url: str) -> int:
    """A worker process: serves one request (which starts its publisher), then idles."""
    app, _ = build_app(f"worker{os.getpid()}", url)
    assert app.test_client().get("/").status_code == 200
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None and publisher.running
    assert publisher.publish()  # in Redis now, not only once its thread has run
    sync.signal_ready()
    sync.stop.wait(30)
    close_app(app)
    return os.getpid()


def test_stats_of_real_worker_processes(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app()
    with ProcessGroup(worker, [(redis_url,)] * 2) as group:
        group.wait_ready(30)
        pids = set(group.pids)
        body = app.test_client().get("/_tiered_cache/stats").get_json()
        seen = {w["pid"] for w in body["workers"]}
        assert pids <= seen
        assert os.getpid() in seen
        metrics_text = app.test_client().get("/_tiered_cache/metrics").get_data(as_text=True)
        group.stop()
        group.join(30)
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    hits = families["tiered_cache_misses"]
    assert {int(s.labels["pid"]) for s in hits.samples} >= pids
    # Workers that stop cleanly take their figures with them.
    body = app.test_client().get("/_tiered_cache/stats").get_json()
    assert not pids & {w["pid"] for w in body["workers"]}


# -- metrics --------------------------------------------------------------------------


def test_metrics_parse_as_prometheus_text(make_app: MakeApp) -> None:
    app, tc = make_app()
    second, _ = make_app(name="second")
    with app.app_context():
        tc.set("x", 1)
    client = app.test_client()
    client.get("/")
    client.get("/")
    second.test_client().get("/")
    assert publisher_of(TieredCache.state(second)).publish()  # type: ignore[union-attr]
    response = client.get("/_tiered_cache/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    # prometheus_client's parser names counters without "_total"; samples keep it.
    hits = families["tiered_cache_l1_hits"]
    assert hits.type == "counter"
    assert all(s.name == "tiered_cache_l1_hits_total" for s in hits.samples)
    by_app = {s.labels["app"]: s for s in hits.samples}
    assert set(by_app) == {"app", "second"}
    assert by_app["app"].labels["pid"] == str(os.getpid())
    assert by_app["app"].labels["host"]
    assert by_app["app"].value >= 1
    assert families["tiered_cache_l1_items"].type == "gauge"
    assert families["tiered_cache_workers"].samples[0].value == 2
    for name in ("hit_ratio", "breaker_open", "bus_connected", "redis_errors"):
        assert f"tiered_cache_{name}" in families


# -- the publisher --------------------------------------------------------------------


def test_workers_of_containers_sharing_a_host_name_are_told_apart() -> None:
    """Containers on the host's network share its name and each numbers its processes
    from 1: host, pid and app alone would make two workers one sample (or none)."""
    record = {"host": "h", "pid": 7, "app": "shop", "stats": {"l1_hits": 1}, "age": 0.0}
    workers = [{**record, "id": "a"}, {**record, "id": "b", "stats": {"l1_hits": 2}}]
    body, _ = metrics.prometheus_text(workers)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert sorted(s.value for s in families["tiered_cache_l1_hits"].samples) == [1.0, 2.0]


def test_a_metrics_read_publishes_this_worker_first(make_app: MakeApp, redis_url: str) -> None:
    """So that the next read, served by another worker, never shows older figures of this
    one (a counter that goes backwards reads as a restart to Prometheus)."""
    app, tc = make_app()
    client = app.test_client()
    client.get("/")
    with app.app_context():
        tc.set("x", 1)
    for _ in range(5):
        client.get("/")
    client.get("/_tiered_cache/metrics")
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    plain = redis.Redis.from_url(redis_url)
    try:
        published = json.loads(plain.get(publisher.key))  # type: ignore[arg-type]
    finally:
        plain.close()
    assert published["stats"]["l1_hits"] == TieredCache.state(app).cache.stats()["l1_hits"]


def test_publisher_starts_on_first_request_not_at_init_app(make_app: MakeApp) -> None:
    before = len(stats_threads())
    app, _ = make_app()
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    assert not publisher.running
    assert len(stats_threads()) == before
    app.test_client().get("/")
    assert publisher.running
    app.test_client().get("/")
    assert len(stats_threads()) == before + 1


def test_published_record(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app()
    app.test_client().get("/")
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    plain = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 5
        while not plain.exists(publisher.key) and time.monotonic() < deadline:
            time.sleep(0.01)
        record = json.loads(plain.get(publisher.key))  # type: ignore[arg-type]
        ttl = plain.pttl(publisher.key)
    finally:
        plain.close()
    assert record["pid"] == os.getpid() and record["app"] == "app" and record["prefix"] == "tc"
    assert publisher.key.startswith(f"tc:1:#stats:{record['host']}:{os.getpid()}:")
    assert 0 < ttl <= 3 * metrics.STATS_PERIOD * 1000
    assert set(record["stats"]) >= {"l1_hits", "l2_hits", "misses", "publish_errors"}


def test_readers_find_workers_through_the_index_never_a_scan(
    app_factory: Callable[..., tuple[Flask, TieredCache]], redis_server: RedisServer
) -> None:
    """A SCAN walks the whole keyspace, whatever its MATCH: on a Redis of millions of
    keys, every scrape of /metrics would. The workers' keys are listed in a set instead,
    and a key that expired (a dead worker) leaves it on the next read."""
    app, _ = app_factory(redis_server.url)
    app.test_client().get("/")
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    admin = redis_server.client()
    index = TieredCache.state(app).cache.layout.stats_index
    try:
        deadline = time.monotonic() + 5
        while not admin.sismember(index, publisher.key) and time.monotonic() < deadline:
            time.sleep(0.01)
        dead = index.removesuffix("index") + "gone-host:1:dead"
        admin.sadd(index, dead)  # listed, but its figures expired long ago
        admin.set("unrelated", "x")
        admin.config_resetstat()
        metrics_text = app.test_client().get("/_tiered_cache/metrics").text
        calls = {k.removeprefix("cmdstat_"): v for k, v in admin.info("commandstats").items()}
        assert "scan" not in calls and "keys" not in calls
        assert 'host="gone-host"' not in metrics_text
        assert admin.smembers(index) == {publisher.key.encode()}
    finally:
        admin.close()


def test_publishing_failures_are_swallowed_and_counted(
    app_factory: Callable[..., tuple[Flask, TieredCache]], redis_server: RedisServer
) -> None:
    app, _ = app_factory(redis_server.url)
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    assert publisher.publish() is True
    redis_server.kill()
    assert publisher.publish() is False
    assert publisher.publish() is False
    assert publisher.errors == 2
    assert publisher.record(TieredCache.state(app).cache)["stats"]["publish_errors"] == 2


def test_publishing_fails_open_even_when_the_cache_does_not(
    app_factory: Callable[..., tuple[Flask, TieredCache]], redis_server: RedisServer
) -> None:
    app, _ = app_factory(redis_server.url, TIERED_CACHE_FAIL_OPEN=False)
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    redis_server.kill()
    assert publisher.publish() is False
    response = app.test_client().get("/_tiered_cache/health")
    assert response.status_code == 503


def test_publisher_stops_when_the_cache_is_closed(make_app: MakeApp) -> None:
    app, _ = make_app()
    app.test_client().get("/")
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None and publisher.running
    TieredCache.state(app).cache.close()
    publisher._stop.set()  # wake it now rather than at the end of the period
    deadline = time.monotonic() + 5
    while publisher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not publisher.running


_FORKED_APP: list[Flask] = []


def in_forked_child() -> tuple[int, bool, bool]:
    """Runs in a forked child of a process whose publisher runs."""
    publisher = publisher_of(TieredCache.state(_FORKED_APP[0]))
    assert publisher is not None
    inherited = publisher.running  # the parent's thread did not survive the fork
    _FORKED_APP[0].test_client().get("/")
    running = publisher.running
    assert publisher.publish()  # do not leave before the thread's first publication
    return os.getpid(), inherited, running


def test_a_forked_worker_publishes_its_own_figures(make_app: MakeApp) -> None:
    app, _ = make_app()
    app.test_client().get("/")
    _FORKED_APP[:] = [app]
    try:
        [(child, inherited, running)] = run_in_processes(
            in_forked_child, [()], timeout=30, start_method="fork"
        )
    finally:
        _FORKED_APP.clear()
    assert not inherited and running
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        workers = app.test_client().get("/_tiered_cache/stats").get_json()["workers"]
        if child in {w["pid"] for w in workers}:
            break
        time.sleep(0.05)
    assert {os.getpid(), child} <= {w["pid"] for w in workers}


_STARTS: list[int] = []


def in_forked_child_counting_starts() -> tuple[list[int], list[int]]:
    """A forked worker: the process-start hooks run again, once, in it."""
    inherited = list(_STARTS)
    client = _FORKED_APP[0].test_client()
    client.get("/public")
    client.get("/public")
    return inherited, list(_STARTS)


def test_process_start_hooks_run_once_per_process(make_app: MakeApp) -> None:
    """They run in the WSGI wrapper (fast-path hits included), once in each process:
    the stats publisher starts there instead of in a per-request before_request hook."""
    app, tc = make_app()
    TieredCache.state(app).on_process_start.append(lambda: _STARTS.append(os.getpid()))

    @app.get("/public")
    @tc.cached(public=True)
    def public() -> str:
        return "page"

    client = app.test_client()
    for _ in range(3):
        client.get("/public")
    assert client.get("/public").headers["X-Cache"] == "HIT-L1"  # the fast path
    assert [os.getpid()] == _STARTS
    _FORKED_APP[:] = [app]
    try:
        [(inherited, after)] = run_in_processes(
            in_forked_child_counting_starts, [()], timeout=30, start_method="fork"
        )
    finally:
        _FORKED_APP.clear()
        _STARTS.clear()
    assert inherited == [os.getpid()]
    assert len(after) == 2 and after[1] != os.getpid()


# -- junk and error replies never fail a reader; counters never go back -------------------


def _junk_records() -> dict[str, bytes]:
    """Records another worker (or anything else) may have left under the stats keys, by
    the last part of their key."""
    good = {"host": "h", "pid": 1, "id": "x", "app": "a", "started": 1.0, "published": 2.0}
    good["stats"] = {}
    records: dict[str, object] = {
        "pid-is-a-name": {**good, "pid": "web-1"},
        "published-null": {**good, "published": None},
        "started-text": {**good, "started": "x"},
        "no-host": {k: v for k, v in good.items() if k != "host"},
        "not-a-dict": [1, 2],
        # A lone surrogate: valid JSON ("\\ud800"), but no UTF-8 for Prometheus or click.
        "host-surrogate": {**good, "host": "h\ud800"},
        "app-surrogate": {**good, "app": "\udfff"},
        "id-surrogate": {**good, "id": "x\udc80"},
        # Shown, without the figures that are not finite numbers a float can hold, or
        # whose names are no UTF-8.
        "bad-figure": {
            **good,
            "id": "figure",
            "stats": {"l1_hits": "many", "misses\ud800": 1, "l2_hits": 3},
        },
    }
    junk = {name: json.dumps(record).encode() for name, record in records.items()}
    # What json reads but no JSON reply may hold (NaN), or Prometheus cannot print.
    junk["bad-figure"] = junk["bad-figure"].replace(
        b'"l2_hits": 3}', b'"l2_hits": 3, "misses": 1' + b"0" * 400 + b', "early_refreshes": NaN}'
    )
    return {
        **junk,
        "published-wide": json.dumps({**good, "published": 0})
        .replace('"published": 0', '"published": 1' + "0" * 400)
        .encode(),
        "deep": b"[" * 100_000,
        "not-json": b"\xff\xfe",
    }


def _serving(make_app: MakeApp) -> tuple[Flask, FlaskClient, str]:
    """An app that has served a request (its publisher runs), its client, its stats index."""
    app, _ = make_app()
    client = app.test_client()
    client.get("/")
    return app, client, TieredCache.state(app).cache.layout.stats_index


def test_junk_under_the_stats_keys_never_fails_a_reader(make_app: MakeApp, redis_url: str) -> None:
    app, client, index = _serving(make_app)
    plain = redis.Redis.from_url(redis_url)
    try:
        for name, raw in _junk_records().items():
            key = index.removesuffix("index") + name
            plain.set(key, raw)
            plain.sadd(index, key)
    finally:
        plain.close()
    stats = client.get("/_tiered_cache/stats")
    assert stats.status_code == 200
    body = stats.get_json()
    json.loads(stats.text, parse_constant=lambda name: pytest.fail(f"{name} in a reply"))
    assert body["complete"] is True
    assert sorted(w["id"] for w in body["workers"]) == sorted(
        ["figure", publisher_of(TieredCache.state(app)).id]  # type: ignore[union-attr]
    )
    other = next(w for w in body["workers"] if w["id"] == "figure")
    assert other["stats"] == {"l2_hits": 3}
    scraped = client.get("/_tiered_cache/metrics")
    assert scraped.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    assert families["tiered_cache_workers"].samples[0].value == 2
    result = app.test_cli_runner().invoke(args=["tiered-cache", "stats"])
    assert result.exit_code == 0, result.output


def test_a_foreign_key_at_the_stats_index_makes_figures_incomplete_not_a_500(
    make_app: MakeApp, redis_url: str
) -> None:
    """An error reply that is no outage (WRONGTYPE here; an ACL's NOPERM alike)."""
    _, client, index = _serving(make_app)
    plain = redis.Redis.from_url(redis_url)
    try:
        plain.delete(index)
        plain.set(index, "not a set")
        stats = client.get("/_tiered_cache/stats")
        scraped = client.get("/_tiered_cache/metrics")
    finally:
        plain.delete(index)
        plain.close()
    assert stats.status_code == 200
    body = stats.get_json()
    assert body["complete"] is False
    assert [w["this_process"] for w in body["workers"]] == [True]
    assert scraped.status_code == 200


def test_a_read_shows_this_worker_as_redis_now_holds_it(make_app: MakeApp, redis_url: str) -> None:
    """Not figures taken a moment after the ones published: another worker serving the
    next scrape would read the older ones from Redis, a counter going backwards."""
    app, _ = make_app()
    client = app.test_client()
    client.get("/")
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    shown = next(
        w for w in client.get("/_tiered_cache/stats").get_json()["workers"] if w["this_process"]
    )
    plain = redis.Redis.from_url(redis_url)
    try:
        held = json.loads(plain.get(publisher.key))  # type: ignore[arg-type]
    finally:
        plain.close()
    assert (shown["published"], shown["stats"]) == (held["published"], held["stats"])


class _HeldPublishes(redis.Redis):
    """A real client whose first pipeline pauses after it was built, before it is sent,
    until ``go_on`` is set (or a second has passed)."""

    def __init__(self, url: str) -> None:
        super().__init__(connection_pool=redis.ConnectionPool.from_url(url))
        self.paused = threading.Event()
        self.go_on = threading.Event()

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        if self.paused.is_set():
            return pipe
        execute = pipe.execute

        def held_execute(raise_on_error: bool = True) -> Any:
            self.paused.set()
            self.go_on.wait(1.0)
            return execute(raise_on_error)

        pipe.execute = held_execute  # type: ignore[method-assign]
        return pipe


def test_an_older_record_never_lands_after_a_newer_one(make_app: MakeApp, redis_url: str) -> None:
    """The publishing thread and a request may publish at once: the record built first
    must not be the one Redis keeps."""
    app, _ = make_app()
    app.test_client().get("/")
    state = TieredCache.state(app)
    publisher = publisher_of(state)
    assert publisher is not None
    built: list[float] = []
    record = publisher.record

    def recording(cache: Any) -> dict[str, Any]:
        made = record(cache)
        built.append(made["published"])
        return made

    publisher.record = recording  # type: ignore[method-assign]
    tier = state.cache.redis
    held = _HeldPublishes(redis_url)
    real, tier.client = tier.client, held  # type: ignore[assignment]
    try:
        first = threading.Thread(target=publisher.publish, args=(state.cache,))
        first.start()
        assert held.paused.wait(5)  # the first record is built, not yet written
        second = threading.Thread(target=publisher.publish, args=(state.cache,))
        second.start()
        second.join(0.5)  # without the lock it lands now, and the first after it
        held.go_on.set()
        first.join(5)
        second.join(5)
    finally:
        tier.client = real
        del publisher.record
        held.close()
    plain = redis.Redis.from_url(redis_url)
    try:
        kept = json.loads(plain.get(publisher.key))  # type: ignore[arg-type]
    finally:
        plain.close()
    assert len(built) >= 2
    assert kept["published"] == max(built)


def test_a_publisher_stopped_while_it_starts_stays_stopped(make_app: MakeApp) -> None:
    """``stop`` (a worker exiting) racing the first request's ``ensure_started``: no
    thread may be left publishing, untracked, for a worker that is gone."""
    app, _ = make_app()
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None and not publisher.running
    before = len(stats_threads())
    publisher._lock.acquire()  # ensure_started gets past its quick check, then waits here
    starting = threading.Thread(target=publisher.ensure_started)
    stopping = threading.Thread(target=publisher.stop, kwargs={"unpublish": False})
    try:
        starting.start()
        starting.join(0.2)
        stopping.start()
        stopping.join(0.2)
    finally:
        publisher._lock.release()
    starting.join(5)
    stopping.join(5)
    assert not publisher.running
    assert len(stats_threads()) == before
