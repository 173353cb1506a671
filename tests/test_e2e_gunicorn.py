"""End to end: ``gunicorn -c gunicorn.conf.py`` (the example app, 4 workers) on a real Redis.

One gunicorn serves every test of the first part, against a Redis of this module that
tests kill, pause and restart (each test starts with it running). Tests use different
products so they do not see each other's pages. Requests go on new connections, so any
worker may answer; the example app names it in ``X-Worker-Pid``.

The embedded-Redis tests run their own gunicorn inside a private network namespace
(``unshare -rn``), where 127.0.0.1:6379 is closed (on this machine a system Redis holds it).
"""

from __future__ import annotations

import http.cookies
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis

from tests.gunicorn_proc import (
    GunicornServer,
    Response,
    can_unshare,
    children_of,
    process_alive,
)
from tests.redis_harness import RedisServer
from tests.waiting import until
from tiered_cache import Cache
from tiered_cache.ratelimit import RateLimiter

HIT_L1 = "HIT-L1"
SWEEP_SECONDS = 15.0
"""A hang guard: an L1 hit from every worker takes two rounds, but a worker just back
from an outage may first wait out its breaker's reset (2 s) and its bus's backoff."""


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def module_gunicorn(
    module_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    env = {
        "TIERED_CACHE_REDIS_URL": module_redis.url,
        "EXAMPLE_DB_PATH": str(tmp_path_factory.mktemp("e2e") / "catalogue.sqlite3"),
        "SECRET_KEY": "e2e-secret",
    }
    with GunicornServer(env=env, workers=4) as server:
        yield server


@pytest.fixture
def redis_server(module_redis: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, running at the start and at the end of each test."""
    _running(module_redis)
    yield module_redis
    _running(module_redis)


def _running(server: RedisServer) -> None:
    if server.paused:
        server.resume()
    if not server.is_running:
        server.restart()


@pytest.fixture
def gunicorn(module_gunicorn: GunicornServer, redis_server: RedisServer) -> GunicornServer:
    assert not module_gunicorn.exited(), module_gunicorn.log()
    return module_gunicorn


def sweep(
    server: GunicornServer,
    path: str,
    done: Callable[[Response], bool] = lambda response: True,
    headers: Mapping[str, str] | None = None,
) -> list[Response]:
    """GET ``path`` from every worker at once, round after round, until each worker has
    given an answer that is ``done``; every answer, in order.

    Rounds, not a stream of requests: a sync worker that just answered often takes the
    next connection too, so sequential requests may never reach some workers.
    """
    pending = server.worker_pids()
    assert len(pending) == server.workers
    answers: list[Response] = []
    deadline = time.monotonic() + SWEEP_SECONDS
    while time.monotonic() < deadline:
        round_ = server.on_distinct_workers(path, server.workers, headers=headers)
        answers += round_
        pending -= {response.pid for response in round_ if done(response)}
        if not pending:
            return answers
    raise AssertionError(f"workers {pending} never answered as expected: {answers}")


def is_l1_hit(response: Response) -> bool:
    return response.status == 200 and response.headers["X-Cache"] == HIT_L1


# -- consistency and hits ---------------------------------------------------------------


def test_after_a_put_every_worker_serves_the_new_value(gunicorn: GunicornServer) -> None:
    # Every worker holds the old page in its L1 first: the PUT has something to undo.
    old = sweep(gunicorn, "/products/1", is_l1_hit)[-1].json()
    price = round(old["price"] + 1.25, 2)

    put = gunicorn.request("PUT", "/products/1", body={"price": price})
    assert put.status == 200, put.body
    assert put.json() == {**old, "price": price}

    # Each worker drops its copy when its listener hears the PUT's message, milliseconds
    # later (L1 alone would keep it for TIERED_CACHE_L1_TTL, 60 s).
    def every_worker_has_the_new_price() -> bool:
        answers = gunicorn.on_distinct_workers("/products/1", gunicorn.workers)
        return all(r.json()["price"] == price for r in answers)

    assert until(every_worker_has_the_new_price, 5.0)
    after = sweep(gunicorn, "/products/1", is_l1_hit)
    assert all(r.json()["price"] == price for r in after)


def test_a_put_is_validated(gunicorn: GunicornServer) -> None:
    for body in ({"price": -1}, {"price": "cheap"}, {"name": ""}, {"colour": "red"}, {"id": 2}):
        response = gunicorn.request("PUT", "/products/5", body=body)
        assert response.status == 400, body
        assert "error" in response.json()
    assert gunicorn.request("PUT", "/products/999", body={"price": 1}).status == 404


def test_hot_reads_are_l1_hits(gunicorn: GunicornServer) -> None:
    for path in ("/products", "/products/2"):
        answers = sweep(gunicorn, path, is_l1_hit)
        assert [r.status for r in answers] == [200] * len(answers)
        # After its first answer, every answer of a worker comes from its L1.
        seen: set[int] = set()
        for response in answers:
            if response.pid in seen:
                assert response.headers["X-Cache"] == HIT_L1, (path, response.pid)
            seen.add(response.pid)
        assert sum(r.headers["X-Cache"] == "MISS" for r in answers) <= 1
        assert "Age" in answers[-1].headers


# -- Redis outages ----------------------------------------------------------------------


def assert_catalogue_answers(server: GunicornServer, seconds: float = 4.0) -> None:
    """For ``seconds``, every catalogue read is a correct 200 within two seconds.

    Long enough to cover what a worker goes through in an outage: the bus stops vouching
    for L1 (about a second), calls time out until the breaker opens, then half-open probes.
    A read pays at most one 0.25 s timeout (the default) and a 20 ms query; two
    seconds leave room for a loaded machine and still tell them from redis-py's default
    timeout (none for a connection, 5 s in many deployments).
    """
    deadline = time.monotonic() + seconds
    slow: list[tuple[str, int, float]] = []
    while time.monotonic() < deadline:
        for path in ("/products/3", "/products/4", "/products/5", "/products"):
            response = server.request("GET", path, timeout=5)
            assert response.status == 200, (path, response.body)
            body = response.json()
            assert len(body["products"]) == 36 if path == "/products" else body["name"]
            if response.elapsed >= 2.0:
                slow.append((path, response.pid, round(response.elapsed, 3)))
    assert not slow, f"reads of two seconds or more (path, worker, seconds): {slow}"


def assert_caches_again(server: GunicornServer, redis_server: RedisServer, path: str) -> None:
    """Once Redis is back, pages are stored in it again: a worker gets ``HIT-L2``."""

    def served_from_redis() -> bool:  # one worker stores the page, the others read it
        answers = server.on_distinct_workers(path, server.workers)
        return any(r.headers["X-Cache"] == "HIT-L2" for r in answers)

    assert until(served_from_redis, 30.0, 0.02), server.log()[-3000:]
    with redis_server.client() as client:
        assert client.dbsize() > 0


def test_reads_answer_while_redis_is_killed_and_cache_again_after(
    gunicorn: GunicornServer, redis_server: RedisServer
) -> None:
    sweep(gunicorn, "/products/3", is_l1_hit)
    redis_server.kill()
    assert_catalogue_answers(gunicorn)
    redis_server.restart()
    assert_caches_again(gunicorn, redis_server, "/products/7")


def test_reads_answer_while_redis_is_paused_and_cache_again_after(
    gunicorn: GunicornServer, redis_server: RedisServer
) -> None:
    sweep(gunicorn, "/products/4", is_l1_hit)
    redis_server.pause()
    assert_catalogue_answers(gunicorn)
    redis_server.resume()
    assert_caches_again(gunicorn, redis_server, "/products/8")


# -- reload ---------------------------------------------------------------------------


def test_hup_replaces_the_workers_without_failing_a_request(gunicorn: GunicornServer) -> None:
    before = gunicorn.worker_pids()
    results: list[tuple[int, int] | BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                response = gunicorn.request("GET", "/products/20", timeout=10)
                results.append((response.status, response.pid))
            except Exception as exc:
                results.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        assert until(lambda: len(results) >= 20, 20.0)
        gunicorn.hup()

        def replaced() -> bool:
            now = gunicorn.worker_pids()
            return len(now) == gunicorn.workers and now.isdisjoint(before)

        assert until(replaced, 30.0, 0.05), gunicorn.log()[-3000:]
        served = len(results)
        assert until(lambda: len(results) >= served + 20, 20.0)
    finally:
        stop.set()
        thread.join(15)
    failed = [r for r in results if not isinstance(r, tuple) or r[0] != 200]
    assert not failed
    new = gunicorn.worker_pids()
    # One request may have been in flight on an old worker; every later one met a new one.
    assert {pid for _, pid in results[served + 1 :]} <= new  # type: ignore[misc]
    # The old workers withdrew their figures on exit; the new ones publish theirs.
    assert until(lambda: stats_pids(gunicorn) == new, 15.0), (stats_pids(gunicorn), new)


def stats_pids(server: GunicornServer) -> set[int]:
    workers = server.request("GET", "/_tiered_cache/stats").json()["workers"]
    return {worker["pid"] for worker in workers}


# -- sessions and rate limits (tc.sessions, tc.limit) ---------------------------------------


def cookie_of(response: Response) -> str:
    jar = http.cookies.SimpleCookie()
    for header in response.headers.get_all("Set-Cookie") or []:
        jar.load(header)
    return "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items() if morsel.value)


def test_login_me_logout_from_any_worker(gunicorn: GunicornServer) -> None:
    anonymous = gunicorn.request("GET", "/me")
    assert anonymous.status == 200 and anonymous.json() == {"user": None}

    login = gunicorn.request("POST", "/login", body={"user": "ann"})
    assert login.status == 200 and login.json() == {"user": "ann"}
    cookie = cookie_of(login)
    assert cookie

    answers = sweep(gunicorn, "/me", headers={"Cookie": cookie})
    assert {r.status for r in answers} == {200}
    assert all(r.json() == {"user": "ann"} for r in answers)

    logout = gunicorn.request("POST", "/logout", headers={"Cookie": cookie})
    assert logout.status == 200
    after = sweep(gunicorn, "/me", headers={"Cookie": cookie})
    assert all(r.json() == {"user": None} for r in after)
    assert gunicorn.request("POST", "/login", body={}).status == 400


def test_search_is_rate_limited_across_workers(gunicorn: GunicornServer) -> None:
    # Two workers answer the first two; the count is shared by the workers.
    answers = gunicorn.on_distinct_workers("/search?q=oak", 2)
    assert len({r.pid for r in answers}) == 2
    answers += [gunicorn.request("GET", "/search?q=oak") for _ in range(38)]
    admitted = [r for r in answers if r.status == 200]
    refused = [r for r in answers if r.status == 429]
    assert len(admitted) == 30 and len(refused) == 10
    assert [p["name"] for p in admitted[0].json()["products"]][:2] == ["Oak chair", "Oak table"]
    body = refused[0].json()
    assert body["error"] == "rate_limited" and body["retry_after"] > 0
    assert int(refused[0].headers["Retry-After"]) > 0


def test_a_reset_frees_the_client_in_every_worker(
    gunicorn: GunicornServer, redis_server: RedisServer
) -> None:
    with Cache(redis_url=redis_server.url) as cache:  # the example's prefix: an admin's view
        limiter = RateLimiter(cache)
        limiter.reset()

        def every_worker_admits() -> bool:
            answers = gunicorn.on_distinct_workers("/search?q=oak", gunicorn.workers)
            return [r.status for r in answers] == [200] * gunicorn.workers

        # A worker may still refuse from memory (an earlier test's refusal) until the
        # reset reaches it over the bus (one worker's admission says nothing of another
        # whose listener is slower): once every worker admits, Redis counts.
        assert until(every_worker_admits, 5.0)
        # Past the limit (30 a minute), then a refusal from every worker: each now holds
        # the refusal in memory.
        assert until(lambda: gunicorn.request("GET", "/search?q=oak").status == 429, 10.0)
        refusals = gunicorn.on_distinct_workers("/search?q=oak", gunicorn.workers)
        assert [r.status for r in refusals] == [429] * gunicorn.workers
        assert {r.pid for r in refusals} == gunicorn.worker_pids()
        assert limiter.reset("127.0.0.1") >= 1

        # Within the bus's delivery time every worker admits the client again, instead
        # of refusing it from memory for the rest of the minute.
        assert until(every_worker_admits, 5.0)
        limiter.reset()


def test_the_home_page_links_the_routes_and_endpoints(gunicorn: GunicornServer) -> None:
    page = gunicorn.request("GET", "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    for link in ("/products", "/products/1", "/search?q=", "/_tiered_cache/health", "/me"):
        assert link.encode() in page.body
    health = gunicorn.request("GET", "/_tiered_cache/health")
    assert health.status == 200 and health.json()["redis"]["ok"] is True


# -- the embedded Redis ------------------------------------------------------------------

needs_unshare = pytest.mark.skipif(
    can_unshare() is not None, reason=f"no private network namespace: {can_unshare()}"
)


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Callable[[int], GunicornServer]]:
    """gunicorns in private network namespaces, with no Redis configured."""
    made: list[GunicornServer] = []

    def start(workers: int) -> GunicornServer:
        env = {
            "TIERED_CACHE_REDIS_URL": None,
            "EXAMPLE_DB_PATH": str(tmp_path / "catalogue.sqlite3"),
        }
        server = GunicornServer(env=env, workers=workers, namespace=True)
        made.append(server)
        server.start()
        return server

    yield start
    for server in made:
        server.stop()
        server.cleanup()


def embedded_redis_of(server: GunicornServer) -> tuple[int, str]:
    """The pid and URL of the master's embedded Redis, from /proc and the master's log."""
    found = re.search(r"started an embedded Redis \(.*?, pid (\d+)\) at (unix://\S+)", server.log())
    assert found, server.log()
    pid, url = int(found[1]), found[2]
    assert pid in children_of(server.pid) - server.worker_pids()
    return pid, url


@needs_unshare
def test_embedded_redis_serves_the_workers_survives_hup_and_dies_with_the_master(
    isolated: Callable[[int], GunicornServer],
) -> None:
    server = isolated(2)
    pid, url = embedded_redis_of(server)
    socket_dir = Path(url.removeprefix("unix://").split("?")[0]).parent
    with redis.Redis.from_url(url) as client:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        first = sweep(server, "/products/1", is_l1_hit)
        assert any(r.headers["X-Cache"] == "HIT-L2" for r in first)  # shared through Redis
        assert client.dbsize() > 0
    health = server.request("GET", "/_tiered_cache/health")
    assert health.status == 200 and health.json()["bus_connected"] is True

    before = server.worker_pids()
    server.hup()
    assert until(lambda: server.worker_pids().isdisjoint(before), 30.0), server.log()[-3000:]
    assert until(lambda: len(server.worker_pids()) == 2, 30.0)
    assert process_alive(pid) and embedded_redis_of(server) == (pid, url)
    assert server.log().count("started an embedded Redis") == 1
    assert server.request("GET", "/_tiered_cache/health").json()["redis"]["ok"] is True

    assert server.stop() == 0
    assert until(lambda: not process_alive(pid), 10.0)
    assert not socket_dir.exists()
    assert "stopped the embedded Redis" in server.log()


@needs_unshare
def test_embedded_redis_dies_when_the_master_is_sigkilled(
    isolated: Callable[[int], GunicornServer],
) -> None:
    server = isolated(1)
    pid, url = embedded_redis_of(server)
    try:
        server.kill_master()
        assert until(lambda: not process_alive(pid), 10.0)
    finally:
        # Nobody was left to delete its directory.
        shutil.rmtree(Path(url.removeprefix("unix://").split("?")[0]).parent, ignore_errors=True)
