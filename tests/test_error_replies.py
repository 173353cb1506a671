"""Error replies that mean Redis cannot serve now are outages, handled as Redis down is.

After a failover, clients of a primary that was demoted get ``READONLY`` on every write;
a full Redis under ``noeviction`` answers ``OOM``. Redis is up and answering, but it
cannot serve: the cache fails open, a session answers 503 (never a logout), a cached
page is served without being stored, a rate limit fails open. Never a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from flask import Flask, Response, session

from tests.flask_apps import close_app
from tests.redis_harness import RedisServer, free_port
from tests.session_apps import Clock, interface, logged_in, made_apps, set_hook
from tiered_cache import Cache, CacheUnavailable, TieredCache
from tiered_cache.redis_tier import outage_reply


@contextlib.contextmanager
def read_only(server: RedisServer) -> Iterator[None]:
    """The server turned into a replica (of nothing that answers), as a failed-over
    primary is: reads work, writes get READONLY."""
    admin = server.client()
    admin.replicaof("127.0.0.1", free_port())
    try:
        yield
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()


def test_outage_replies_are_told_from_bad_commands(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.rpush("a-list", "x")
    with pytest.raises(Exception) as wrong_type:
        client.get("a-list")
    assert not outage_reply(wrong_type.value)  # type: ignore[arg-type]
    with read_only(redis_server), pytest.raises(Exception) as read_only_reply:
        client.set("k", "v")
    assert outage_reply(read_only_reply.value)  # type: ignore[arg-type]
    pipe = client.pipeline(transaction=False)
    pipe.eval("return redis.error_reply('BUSY Redis is busy running a script')", 0)
    busy = pipe.execute(raise_on_error=False)[0]
    assert outage_reply(busy)  # a plain ResponseError, recognised by its code
    client.close()


def test_the_cache_fails_open_on_a_read_only_redis(redis_server: RedisServer) -> None:
    with Cache(redis_url=redis_server.url) as cache:
        assert cache.set("k", "v")
        with read_only(redis_server):
            assert cache.set("k", "w") is False
            assert cache.incr("n") is None  # its pipeline returns errors, not raises them
            assert cache.delete("k") == 0
            assert cache.invalidate_namespace("ns") == 0
            assert cache.get("k") == "v"  # reads are still served
        assert cache.stats()["redis_errors"] == 4
        assert cache.set("k", "w") and cache.get("k") == "w"


def test_the_cache_fails_open_on_a_full_redis(redis_server: RedisServer) -> None:
    admin = redis_server.client()
    with Cache(redis_url=redis_server.url) as cache:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        try:
            assert cache.set("k", "v") is False
        finally:
            admin.config_set("maxmemory", 0)
        assert cache.set("k", "v")
    admin.close()


def test_a_cache_that_does_not_fail_open_raises_cache_unavailable(
    redis_server: RedisServer,
) -> None:
    cache = Cache(redis_url=redis_server.url, fail_open=False)
    with cache, read_only(redis_server), pytest.raises(CacheUnavailable):
        cache.set("k", "v")


def test_a_session_is_a_503_not_a_logout_on_a_read_only_redis(
    redis_server: RedisServer,
) -> None:
    with made_apps(redis_server.url) as make:
        app, _ = make()
        client = logged_in(app, "alice")
        with read_only(redis_server):
            response = client.get("/me")  # GETEX slides the TTL: a write
            assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
            assert "Set-Cookie" not in response.headers
            assert client.get("/plain").text == "plain"  # no session used: served
        assert client.get("/me").text == "alice"


@pytest.mark.parametrize("changed", [False, True], ids=["unchanged", "changed"])
def test_a_failed_renewal_loses_a_response_only_if_the_session_changed(
    redis_server: RedisServer, changed: bool
) -> None:
    """Renewal (half the cookie's lifetime gone) writes at the end of the request: if
    Redis refuses it, an unchanged session lost nothing and the response stands, with
    the cookie renewed all the same (the session's TTL slid as it loaded; and a renewal
    whose reply is lost may have run, see test_session_faults)."""
    with made_apps(redis_server.url) as make:
        app, _ = make()
        clock = Clock()
        interface(app).clock = clock
        client = logged_in(app, "alice")
        admin = redis_server.client()

        def hook() -> None:
            assert session.get("user_id") == "alice"  # loaded while Redis still writes
            admin.replicaof("127.0.0.1", free_port())
            if changed:
                session["x"] = "1"

        set_hook(app, hook)
        clock.advance(interface(app).store.ttl / 2 + 1)
        try:
            response = client.post("/hook")
        finally:
            admin.replicaof("NO", "ONE")
            admin.close()
        assert response.status_code == (503 if changed else 200)
        assert ("Set-Cookie" in response.headers) == (not changed)
        assert client.get("/me").text == "alice"


def test_a_page_is_served_not_stored_and_a_limit_fails_open_on_a_read_only_redis(
    redis_server: RedisServer,
) -> None:
    app = Flask(__name__)
    app.config.update(TIERED_CACHE_REDIS_URL=redis_server.url)
    tc = TieredCache(app)

    @app.route("/page")
    @tc.cached()
    def page() -> str:
        return "page"

    @app.route("/limited")
    @tc.limit("100/minute")
    def limited() -> str:
        return "limited"

    client = app.test_client()
    try:
        with read_only(redis_server):
            answers = [client.get("/page") for _ in range(2)]
            assert [(a.status_code, a.headers["X-Cache"]) for a in answers] == [
                (200, "MISS"),
                (200, "MISS"),
            ]
            assert client.get("/limited").status_code == 200
        assert client.get("/page").headers["X-Cache"] == "MISS"
        assert client.get("/page").headers["X-Cache"] == "HIT-L1"
    finally:
        close_app(app)


def test_a_sessions_503_keeps_the_exchanges_headers_not_the_pages(
    redis_server: RedisServer,
) -> None:
    """A changed session that cannot be saved turns the response into a 503, whose
    headers were all dropped: without its CORS headers a browser hid the 503 from the
    page that asked (a network error instead), and the rate-limit figures went too."""
    with made_apps(redis_server.url) as make:
        app, _ = make()

        @app.after_request
        def cors(response: Response) -> Response:
            response.headers["Access-Control-Allow-Origin"] = "https://shop.example"
            response.headers["X-RateLimit-Remaining"] = "4"
            response.headers["Vary"] = "Origin"
            response.headers["ETag"] = '"page"'
            return response

        client = logged_in(app, "alice")
        admin = redis_server.client()

        def hook() -> None:
            session["x"] = "1"
            admin.replicaof("127.0.0.1", free_port())  # the save will be refused

        set_hook(app, hook)
        try:
            response = client.post("/hook")
        finally:
            admin.replicaof("NO", "ONE")
            admin.close()
        assert response.status_code == 503
        assert response.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert response.headers["X-RateLimit-Remaining"] == "4"
        assert "Origin" in response.vary  # and Cookie: the session layer read it
        assert "ETag" not in response.headers and "Set-Cookie" not in response.headers
        assert int(response.headers["Retry-After"]) >= 1
