"""The WSGI fast path: public pages answered from L1 before Flask builds a request context."""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from flask import Flask, Response, request

from tests import test_routes
from tests.procs import run_in_processes
from tests.test_routes import AppFactory, xcache
from tests.waiting import until
from tiered_cache.flask_ext import TieredCache

make_app = test_routes.make_app  # the app factory fixture, shared


def hooked_app(make_app: AppFactory, **config: Any) -> tuple[Flask, Counter[str]]:
    """An app counting its before_request hooks and views, with public and private pages."""
    app, tc = make_app(**config)
    calls: Counter[str] = Counter()

    @app.before_request
    def hook() -> None:
        calls["before_request"] += 1

    @app.route("/public")
    @tc.cached(public=True)
    def public() -> str:
        calls["public"] += 1
        return f"public {calls['public']}"

    @app.route("/private")
    @tc.cached()
    def private() -> str:
        calls["private"] += 1
        return "private"

    @app.route("/hello")
    @tc.cached(public=True)
    def hello() -> Response:
        calls["hello"] += 1
        language = request.headers.get("Accept-Language", "en")
        return Response(f"hello in {language}", headers={"Vary": "Accept-Language"})

    @app.route("/catalogue")
    @tc.cached(public=True, namespace="catalogue")
    def catalogue() -> str:
        calls["catalogue"] += 1
        return f"catalogue {calls['catalogue']}"

    @app.route("/mine")
    @tc.cached(public=True, unless=lambda: False)
    def mine() -> str:
        return "mine"

    return app, calls


def test_a_public_hit_skips_before_request_and_the_view(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    assert xcache(client.get("/public")) == "MISS"
    assert calls["before_request"] == 1
    for _ in range(3):
        hit = client.get("/public")
        assert (hit.text, xcache(hit), hit.headers["Age"]) == ("public 1", "HIT-L1", "0")
        assert hit.headers["ETag"].startswith('"')
    assert (calls["before_request"], calls["public"]) == (1, 1)


def test_a_non_public_cached_route_still_runs_before_request(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    client.get("/private")
    assert xcache(client.get("/private")) == "HIT-L1"
    assert (calls["before_request"], calls["private"]) == (2, 1)


def test_routes_with_unless_are_left_to_flask(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    client.get("/mine")
    assert xcache(client.get("/mine")) == "HIT-L1"
    assert calls["before_request"] == 2  # unless() needs a request context


def test_an_l2_hit_goes_through_flask_then_the_fast_path_serves(make_app: AppFactory) -> None:
    first, _ = hooked_app(make_app)
    second, calls = hooked_app(make_app)
    first.test_client().get("/public")
    client = second.test_client()
    assert xcache(client.get("/public")) == "HIT-L2"
    assert xcache(client.get("/public")) == "HIT-L1"
    assert (calls["before_request"], calls["public"]) == (1, 0)


def test_the_fast_path_answers_304_and_head(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    got = client.get("/public")
    etag = got.headers["ETag"]
    answer = client.get("/public", headers={"If-None-Match": f'W/{etag}, "x"'})
    assert (answer.status_code, answer.data, xcache(answer)) == (304, b"", "HIT-L1")
    assert answer.headers["ETag"] == etag
    head = client.head("/public")
    assert (head.status_code, head.data, xcache(head)) == (200, b"", "HIT-L1")
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    assert calls["before_request"] == 1


def test_public_pages_are_served_with_authorization(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    client.get("/public")
    hit = client.get("/public", headers={"Authorization": "Bearer anyone"})
    assert (xcache(hit), calls["before_request"]) == ("HIT-L1", 1)


def test_the_fast_path_honours_vary(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    for language in ("en", "fr", "en", "fr"):
        answer = client.get("/hello", headers={"Accept-Language": language})
        assert answer.text == f"hello in {language}"
    assert (calls["hello"], calls["before_request"]) == (2, 2)
    assert xcache(client.get("/hello", headers={"Accept-Language": "de"})) == "MISS"


def test_query_strings_are_separate_locations(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    client.get("/public?a=1&b=2")
    assert xcache(client.get("/public?b=2&a=1")) == "HIT-L1"  # same page, through Flask
    assert calls["before_request"] == 2
    assert xcache(client.get("/public?b=2&a=1")) == "HIT-L1"  # now the fast path knows it
    assert xcache(client.get("/public?a=1&b=2")) == "HIT-L1"
    assert (calls["before_request"], calls["public"]) == (2, 1)


def test_invalidation_reaches_the_fast_path(make_app: AppFactory) -> None:
    app, _ = hooked_app(make_app)
    other, _ = hooked_app(make_app)
    client = app.test_client()
    client.get("/catalogue")
    assert xcache(client.get("/catalogue")) == "HIT-L1"
    with app.app_context():
        app.extensions["tiered_cache"].cache.invalidate_namespace("catalogue")
    assert client.get("/catalogue").text == "catalogue 2"
    assert xcache(client.get("/catalogue")) == "HIT-L1"
    with other.app_context():  # another worker clears everything: the bus tells this one
        other.extensions["tiered_cache"].cache.clear()
    assert until(lambda: xcache(client.get("/catalogue")) == "MISS", 3.0)


def test_a_non_public_page_is_never_served_by_the_fast_path(make_app: AppFactory) -> None:
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.before_request
    def hook() -> None:
        calls["before_request"] += 1

    # Two routes sharing one key: the public one lets the fast path look the key up.
    @app.route("/open")
    @tc.cached(public=True, key_prefix="shared")
    def open_page() -> str:
        return "open"

    @app.route("/closed")
    @tc.cached(key_prefix="shared")
    def closed_page() -> str:
        return "closed"

    client = app.test_client()
    client.get("/open")
    with app.app_context():
        tc.clear()
    assert client.get("/closed").text == "closed"  # a non-public page under the shared key
    before = calls["before_request"]
    answer = client.get("/open", headers={"Authorization": "Bearer x"})
    assert calls["before_request"] == before + 1  # not served by the fast path
    assert (answer.text, xcache(answer)) == ("open", "MISS")


def test_other_methods_fall_through(make_app: AppFactory) -> None:
    app, calls = hooked_app(make_app)
    client = app.test_client()
    client.get("/public")
    assert client.post("/public").status_code == 405
    assert calls["before_request"] == 2


def test_the_fast_path_never_waits_on_redis_for_a_namespace_version(
    make_app: AppFactory,
) -> None:
    """A version this process cannot vouch for (as after a bus reconnect) sends the
    request on to Flask, which asks Redis: the fast path itself makes no Redis call."""
    app, calls = hooked_app(make_app)
    client = app.test_client()
    client.get("/catalogue")
    assert xcache(client.get("/catalogue")) == "HIT-L1"
    state = TieredCache.state(app)
    state.cache._versions.clear()
    asked: list[str] = []
    tier = state.cache.redis
    real = tier.run
    tier.run = lambda what, call, **kw: asked.append(what) or real(what, call, **kw)  # type: ignore[method-assign]

    routes = state.extras["routes"]
    target = routes.fast[("http", "localhost", "", "/catalogue", "")]
    find = routes.fast_finder()
    assert find(target, {"REQUEST_METHOD": "GET", "PATH_INFO": "/catalogue"}) is None
    assert asked == []
    before = calls["before_request"]
    response = client.get("/catalogue")
    assert response.text == "catalogue 1" and calls["before_request"] == before + 1
    assert "namespace version" in asked


_FORKED: list[Flask] = []


def first_answers_in_forked_child() -> list[str]:
    """A forked worker's first answers for a page its parent holds in L1."""
    client = _FORKED[0].test_client()
    return [xcache(client.get("/public")) for _ in range(2)]


def test_a_forked_worker_never_answers_from_its_parents_l1(make_app: AppFactory) -> None:
    """The child starts with an empty L1 of its own (no bus keeps the inherited copy
    current): its first request goes through Flask to Redis, then its own L1 serves."""
    app, _ = hooked_app(make_app)
    client = app.test_client()
    client.get("/public")
    assert xcache(client.get("/public")) == "HIT-L1"  # the fast path, in this process
    _FORKED[:] = [app]
    try:
        [answers] = run_in_processes(
            first_answers_in_forked_child, [()], timeout=30, start_method="fork"
        )
    finally:
        _FORKED.clear()
    assert answers == ["HIT-L2", "HIT-L1"]


def test_a_failing_process_start_hook_is_logged_once_not_a_500_on_every_request(
    make_app: AppFactory, caplog: Any
) -> None:
    """A start hook may fail for reasons of its own (no thread left to start, under a
    container's process limit): the requests of that worker must still be served."""
    app, tc = make_app()
    calls: Counter[str] = Counter()

    def fails() -> None:
        calls["hook"] += 1
        raise RuntimeError("can't start new thread")

    TieredCache.state(app).on_process_start.insert(0, fails)

    @app.route("/page")
    @tc.cached(public=True)
    def page() -> str:
        return "page"

    client = app.test_client()
    answers = [client.get("/page") for _ in range(3)]
    assert [(a.status_code, xcache(a)) for a in answers] == [
        (200, "MISS"),
        (200, "HIT-L1"),
        (200, "HIT-L1"),
    ]
    assert calls["hook"] == 1
    assert "a per-process start hook failed" in caplog.text


def proxied_app(redis_url: str, *, wrapped_before_init_app: bool) -> tuple[Flask, Counter[str]]:
    """A public page behind ProxyFix (forwarded scheme and host), and a count of the
    requests that reached Flask."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    name = "proxied-before" if wrapped_before_init_app else "proxied-after"
    app = Flask(name)
    app.config.update(TIERED_CACHE_REDIS_URL=redis_url, TIERED_CACHE_PREFIX=name)
    if wrapped_before_init_app:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_host=1, x_proto=1)  # type: ignore[method-assign]
    tc = TieredCache(app)
    if not wrapped_before_init_app:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_host=1, x_proto=1)  # type: ignore[method-assign]
    hooks: Counter[str] = Counter()

    @app.before_request
    def count() -> None:
        hooks["before"] += 1

    @app.route("/page")
    @tc.cached(public=True)
    def page() -> str:
        return f"page of {request.scheme}://{request.host}"

    return app, hooks


FORWARDED: Final = {"X-Forwarded-Host": "shop.example", "X-Forwarded-Proto": "https"}


def test_middleware_wrapped_before_init_app_turns_the_fast_path_off(
    redis_url: str, caplog: Any
) -> None:
    """ProxyFix wrapped before init_app would run after the fast path: Flask keys a page
    by the forwarded scheme and host, the fast path would look it up by the raw ones and
    serve a raw request's page to a forwarded one (and skip the middleware). init_app
    says so, and the fast path serves nothing for the app; Flask serves its hits."""
    app, hooks = proxied_app(redis_url, wrapped_before_init_app=True)
    assert "wraps app.wsgi_app before init_app" in caplog.text
    try:
        client = app.test_client()
        for _ in range(2):  # a raw request first: it registered the raw location
            assert client.get("/page").text == "page of http://localhost"
        first = client.get("/page", headers=FORWARDED)
        assert (first.text, xcache(first)) == ("page of https://shop.example", "MISS")
        hit = client.get("/page", headers=FORWARDED)
        assert (hit.text, xcache(hit)) == ("page of https://shop.example", "HIT-L1")
        assert hooks["before"] == 4  # every one through Flask
        assert TieredCache.state(app).extras["routes"].fast == {}
    finally:
        TieredCache.state(app).cache.close()


def test_middleware_wrapped_after_init_app_runs_before_the_fast_path(redis_url: str) -> None:
    app, hooks = proxied_app(redis_url, wrapped_before_init_app=False)
    try:
        client = app.test_client()
        answers = [client.get("/page", headers=FORWARDED) for _ in range(3)]
        assert [(a.text, xcache(a)) for a in answers] == [
            ("page of https://shop.example", "MISS"),
            ("page of https://shop.example", "HIT-L1"),
            ("page of https://shop.example", "HIT-L1"),
        ]
        assert hooks["before"] == 1  # the hits came from the fast path
        raw = client.get("/page")
        assert (raw.text, xcache(raw)) == ("page of http://localhost", "MISS")
    finally:
        TieredCache.state(app).cache.close()


def in_a_child_forked_during_a_miss() -> tuple[str | None, bool]:
    """A miss in a process forked while a parent's thread held the misses' lock."""
    app = _FORKED[0]
    routes = TieredCache.state(app).extras["routes"]
    answer = app.test_client().get("/other")
    return xcache(answer), routes._misses == 0


def test_a_child_forked_while_a_miss_was_counted_serves_and_stores(make_app: AppFactory) -> None:
    """The parent's misses in flight do not exist in a forked child: their count and
    their lock (held by a parent's thread at the fork) must not follow it there."""
    app, tc = make_app()

    @app.route("/other")
    @tc.cached()
    def other() -> str:
        return "other"

    routes = TieredCache.state(app).extras["routes"]
    routes._count_miss(+1)  # a miss in flight in this process
    _FORKED[:] = [app]
    try:
        with routes._misses_lock:  # held by this thread while the child is forked
            [(served, settled)] = run_in_processes(
                in_a_child_forked_during_a_miss, [()], timeout=20, start_method="fork"
            )
    finally:
        _FORKED.clear()
        routes._count_miss(-1)
    assert (served, settled) == ("MISS", True)
