"""``@tc.limit``, the default limits and their HTTP answers, through Flask's test client."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from tests.flask_apps import close_app
from tests.ratelimit_support import CommandCounter
from tests.redis_harness import RedisServer
from tiered_cache import ConfigurationError, RateLimitExceeded
from tiered_cache.endpoints import publisher_of
from tiered_cache.flask_ext import TieredCache
from tiered_cache.limiting import RateLimited, ietf_fields
from tiered_cache.ratelimit import STRATEGIES, LimitState, parse_limits

MakeApp = Callable[..., tuple[Flask, TieredCache]]


def ok() -> str:
    return "ok"


def test_decorating_leaves_the_function_alone(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/tight", "tight", tc.limit("1/minute")(ok))
    app.add_url_rule("/loose", "loose", tc.limit("5/minute")(ok))
    app.add_url_rule("/plain", "plain", ok)
    client = ready(app, tc)
    assert figures(client.get("/tight"))[:2] == (1, 0)
    assert figures(client.get("/loose"))[:2] == (5, 4)
    assert "X-RateLimit-Limit" not in client.get("/plain").headers


@pytest.fixture
def app_factory() -> Iterator[Callable[..., tuple[Flask, TieredCache]]]:
    """Apps with the extension, their routes added by the test before the first request."""
    made: list[Flask] = []

    def make(
        url: str, static_folder: str | None = None, **config: Any
    ) -> tuple[Flask, TieredCache]:
        app = Flask(f"app{len(made)}", static_folder=static_folder, static_url_path="/static")
        app.config.update(TIERED_CACHE_REDIS_URL=url, TIERED_CACHE_INVALIDATION=False)
        app.config.update({f"TIERED_CACHE_{k.upper()}": v for k, v in config.items()})
        tc = TieredCache()
        app.extensions["test_tc"] = tc
        made.append(app)
        return app, tc

    yield make
    for app in made:
        if "tiered_cache" in app.extensions:
            close_app(app)


@pytest.fixture
def make_app(app_factory: MakeApp, redis_url: str) -> MakeApp:
    return lambda **config: app_factory(redis_url, **config)


def ready(app: Flask, tc: TieredCache) -> Any:
    tc.init_app(app)
    return app.test_client()


def figures(response: Any) -> tuple[int, int, int]:
    h = response.headers
    return int(h["X-RateLimit-Limit"]), int(h["X-RateLimit-Remaining"]), int(h["X-RateLimit-Reset"])


RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
IETF = ("RateLimit-Policy", "RateLimit")


# -- headers and the 429 ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_headers_count_down_then_429(make_app: MakeApp, strategy: str) -> None:
    app, tc = make_app()
    app.add_url_rule("/r", view_func=tc.limit("20/minute", strategy=strategy)(ok))
    client = ready(app, tc)
    seen = []
    for _ in range(20):
        before = time.time()
        response = client.get("/r")
        assert response.status_code == 200
        limit, remaining, reset = figures(response)
        assert limit == 20
        assert before <= reset <= math.ceil(time.time()) + 120
        seen.append(remaining)
        name = '"20/minute"'
        assert response.headers["RateLimit-Policy"] == f"{name};q=20;w=60"
        match = re.fullmatch(rf"{name};r=(\d+);t=(\d+)", response.headers["RateLimit"])
        assert match and int(match[1]) == remaining and 0 < int(match[2]) <= 120
    assert seen == list(range(19, -1, -1))

    refused = client.get("/r")
    assert refused.status_code == 429
    assert refused.content_type == "application/json"
    body = refused.get_json()
    retry = int(refused.headers["Retry-After"])
    assert body == {"error": "rate_limited", "limit": "20/minute", "retry_after": retry}
    assert 1 <= retry <= 120
    assert figures(refused)[:2] == (20, 0)
    assert re.fullmatch(r'"20/minute";r=0;t=\d+', refused.headers["RateLimit"])
    assert app.extensions["tiered_cache"].cache.stats()["ratelimit_refusals"] == 1


def test_most_restrictive_limit_in_x_headers_all_in_ietf(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/r", view_func=tc.limit("10/minute;3/hour")(ok))
    client = ready(app, tc)
    response = client.get("/r")
    assert figures(response)[:2] == (3, 2)
    assert response.headers["RateLimit-Policy"] == '"10/minute";q=10;w=60, "3/hour";q=3;w=3600'
    assert re.fullmatch(r'"10/minute";r=9;t=60, "3/hour";r=2;t=3600', response.headers["RateLimit"])
    for _ in range(2):
        client.get("/r")
    refused = client.get("/r")
    assert refused.get_json()["limit"] == "3/hour"
    assert int(refused.headers["Retry-After"]) > 60


def test_ietf_names_are_structured_field_strings() -> None:
    limit = parse_limits("5 per minute")[0]
    states = [LimitState(limit, 4, 10.2, 0.0), LimitState(limit, 3, 0.0, 0.0)]
    assert ietf_fields(states) == [
        ("RateLimit-Policy", '"5 per minute";q=5;w=60, "5 per minute#";q=5;w=60'),
        ("RateLimit", '"5 per minute";r=4;t=11, "5 per minute#";r=3;t=0'),
    ]


def test_async_view(make_app: MakeApp) -> None:
    app, tc = make_app()

    async def slow() -> str:
        return "async"

    app.add_url_rule("/r", "r", tc.limit("1/minute")(slow))
    client = ready(app, tc)
    first = client.get("/r")
    assert first.get_data(as_text=True) == "async" and figures(first)[1] == 0
    assert client.get("/r").status_code == 429


def test_app_without_limits_drops_its_hook(app_factory: MakeApp, redis_url: str) -> None:
    bare, tc = app_factory(redis_url)
    bare.add_url_rule("/p", "p", ok)
    ready(bare, tc).get("/p")
    hooks = bare.before_request_funcs.get(None, [])
    assert not any(getattr(h, "__name__", "") == "before_request" for h in hooks)
    limited, tc2 = app_factory(redis_url, ratelimit_default="100/minute")
    limited.add_url_rule("/p", "p", ok)
    client = ready(limited, tc2)
    assert [figures(client.get("/p"))[1] for _ in range(2)] == [99, 98]


def test_unlimited_route_has_no_headers(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/free", view_func=ok)
    response = ready(app, tc).get("/free")
    assert response.status_code == 200
    assert not any(name in response.headers for name in RATE_HEADERS + IETF)


def test_error_handler_can_reshape_the_429(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/r", view_func=tc.limit("1/minute")(ok))

    @app.errorhandler(RateLimitExceeded)
    def slow_down(error: RateLimitExceeded) -> tuple[str, int]:
        assert isinstance(error, RateLimited) and error.limit == "1/minute"
        return f"slow down, {error.retry_after} s", 429

    client = ready(app, tc)
    client.get("/r")
    refused = client.get("/r")
    assert refused.status_code == 429
    assert refused.get_data(as_text=True).startswith("slow down, ")
    assert refused.headers["X-RateLimit-Remaining"] == "0"  # figures still sent


# -- what is counted ----------------------------------------------------------------------


def test_several_limits_one_evalsha_per_request(
    app_factory: MakeApp, redis_server: RedisServer
) -> None:
    app, tc = app_factory(redis_server.url)
    app.add_url_rule("/r", view_func=tc.limit("100/minute;1000/hour;5000/day")(ok))
    client = ready(app, tc)
    client.get("/r")  # loads the script, starts the stats publisher
    publisher = publisher_of(TieredCache.state(app))
    assert publisher is not None
    publisher.stop(unpublish=False)  # its SET, SADD and PEXPIRE would be counted
    with redis_server.client() as own:
        counter = CommandCounter(own)
        counter.start()
        for _ in range(25):
            assert client.get("/r").status_code == 200
        commands = counter.client_commands()
    assert commands == {"evalsha": 25}


def test_refused_client_costs_redis_almost_nothing(
    app_factory: MakeApp, redis_server: RedisServer
) -> None:
    app, tc = app_factory(redis_server.url)
    app.add_url_rule("/r", view_func=tc.limit("20/minute")(ok))
    client = ready(app, tc)
    assert [client.get("/r").status_code for _ in range(20)] == [200] * 20
    with redis_server.client() as own:
        before = own.info("stats")["total_commands_processed"]
        statuses = [client.get("/r").status_code for _ in range(200)]
        after = own.info("stats")["total_commands_processed"]
    assert statuses == [429] * 200
    assert after - before - 1 < 20  # one INFO is ours; one EVALSHA, then the deny cache


def test_cost_int_and_callable(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/five", "five", tc.limit("10/minute", cost=5)(ok))

    def weight() -> int:
        return int(request.args.get("w", "1"))

    app.add_url_rule("/weighted", "weighted", tc.limit("10/minute", cost=weight)(ok))
    client = ready(app, tc)
    assert [figures(client.get("/five"))[1] for _ in range(2)] == [5, 0]
    assert client.get("/five").status_code == 429
    assert figures(client.get("/weighted?w=7"))[1] == 3
    assert client.get("/weighted?w=4").status_code == 429
    free = client.get("/weighted?w=0")  # free: not checked, no figures
    assert free.status_code == 200 and "X-RateLimit-Remaining" not in free.headers
    assert figures(client.get("/weighted?w=3"))[1] == 0


def test_methods(make_app: MakeApp) -> None:
    app, tc = make_app()
    view = tc.limit("1/minute", methods=["post"])(ok)
    app.add_url_rule("/r", view_func=view, methods=["GET", "POST"])
    client = ready(app, tc)
    assert client.post("/r").status_code == 200
    assert client.post("/r").status_code == 429
    assert [client.get("/r").status_code for _ in range(3)] == [200] * 3


def test_get_counts_head_which_runs_the_get_view(make_app: MakeApp) -> None:
    app, tc = make_app()
    view = tc.limit("2/minute", methods=["GET"])(ok)
    app.add_url_rule("/r", view_func=view, methods=["GET", "POST"])
    client = ready(app, tc)
    assert [client.head("/r").status_code for _ in range(2)] == [200, 200]
    assert client.get("/r").status_code == 429
    assert client.post("/r").status_code == 200  # not counted


def test_exempt_when(make_app: MakeApp) -> None:
    app, tc = make_app()
    exempt = tc.limit("1/minute", exempt_when=lambda: request.headers.get("X-Admin") == "1")
    app.add_url_rule("/r", view_func=exempt(ok))
    client = ready(app, tc)
    assert client.get("/r").status_code == 200
    assert client.get("/r").status_code == 429
    admin = client.get("/r", headers={"X-Admin": "1"})
    assert admin.status_code == 200 and "X-RateLimit-Limit" not in admin.headers


def test_scope_shared_by_two_routes_and_separate_by_default(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/a", "a", tc.limit("3/minute", scope="search")(ok))
    app.add_url_rule("/b", "b", tc.limit("3/minute", scope="search")(ok))
    app.add_url_rule("/c", "c", tc.limit("3/minute")(ok))
    app.add_url_rule("/d", "d", tc.limit("3/minute")(ok))
    client = ready(app, tc)
    shared = [client.get(path).status_code for path in ("/a", "/b", "/a", "/b")]
    assert shared == [200, 200, 200, 429]
    own = [client.get(path).status_code for path in ("/c", "/d", "/c", "/d", "/c", "/d")]
    assert own == [200] * 6


def test_default_key_is_the_address_flask_sees(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/r", view_func=tc.limit("2/minute")(ok))
    client = ready(app, tc)
    one = {"REMOTE_ADDR": "10.0.0.1"}
    spoofs = [{"X-Forwarded-For": f"192.0.2.{i}"} for i in range(3)]
    codes = [client.get("/r", environ_base=one, headers=h).status_code for h in spoofs]
    assert codes == [200, 200, 429]  # X-Forwarded-For alone changes nothing
    assert client.get("/r", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200


def test_proxy_fix_makes_the_forwarded_address_the_key(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/r", view_func=tc.limit("1/minute")(ok))
    client = ready(app, tc)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    proxy = {"REMOTE_ADDR": "10.9.9.9"}
    for address in ("198.51.100.1", "198.51.100.2"):
        headers = {"X-Forwarded-For": address}
        assert client.get("/r", environ_base=proxy, headers=headers).status_code == 200
    again = client.get("/r", environ_base=proxy, headers={"X-Forwarded-For": "198.51.100.1"})
    assert again.status_code == 429


def test_custom_key(make_app: MakeApp) -> None:
    app, tc = make_app()
    by_user = tc.limit("1/minute", key=lambda: request.headers.get("X-User", "anon"))
    app.add_url_rule("/r", view_func=by_user(ok))
    client = ready(app, tc)
    assert client.get("/r", headers={"X-User": "ann"}).status_code == 200
    assert client.get("/r", headers={"X-User": "bob"}).status_code == 200
    assert client.get("/r", headers={"X-User": "ann"}).status_code == 429


def test_stacked_decorators_are_checked_top_first(make_app: MakeApp) -> None:
    """A client refused by its own limit, listed first, spends nothing of the shared one."""
    app, tc = make_app()
    per_client = tc.limit("1/minute")
    overall = tc.limit("3/minute", key=lambda: "everyone", scope="overall")
    app.add_url_rule("/r", view_func=per_client(overall(ok)))
    client = ready(app, tc)
    assert client.get("/r").status_code == 200
    for _ in range(5):
        refused = client.get("/r")
        assert refused.status_code == 429 and refused.get_json()["limit"] == "1/minute"
    for address in ("10.1.1.1", "10.1.1.2"):
        assert client.get("/r", environ_base={"REMOTE_ADDR": address}).status_code == 200


def test_stacked_decorators_each_count(make_app: MakeApp) -> None:
    app, tc = make_app()
    per_client = tc.limit("5/minute")
    overall = tc.limit("2/minute", key=lambda: "everyone", scope="overall")
    app.add_url_rule("/r", view_func=per_client(overall(ok)))
    client = ready(app, tc)
    first = client.get("/r")
    assert figures(first)[:2] == (2, 1)  # the tighter of the two
    assert client.get("/r").status_code == 200
    refused = client.get("/r", environ_base={"REMOTE_ADDR": "10.1.1.1"})
    assert refused.status_code == 429 and refused.get_json()["limit"] == "2/minute"


# -- route caching ----------------------------------------------------------------------


@pytest.mark.parametrize("limit_outside", [True, False])
def test_limit_runs_before_a_cached_hit_whatever_the_order(
    make_app: MakeApp, limit_outside: bool
) -> None:
    app, tc = make_app()
    calls = []

    def view() -> str:
        calls.append(1)
        return "page"

    limit, cached = tc.limit("3/minute"), tc.cached(timeout=60)
    decorated = limit(cached(view)) if limit_outside else cached(limit(view))
    app.add_url_rule("/page", "page", decorated)
    client = ready(app, tc)
    responses = [client.get("/page") for _ in range(4)]
    assert [r.headers.get("X-Cache") for r in responses[:3]] == ["MISS", "HIT-L1", "HIT-L1"]
    assert [figures(r)[1] for r in responses[:3]] == [2, 1, 0]
    assert responses[3].status_code == 429 and len(calls) == 1


def test_cached_pages_do_not_carry_one_clients_figures(make_app: MakeApp) -> None:
    app, tc = make_app()
    view = tc.cached(timeout=60, public=True)(
        tc.limit("5/minute", exempt_when=lambda: request.args.get("x") == "1")(ok)
    )
    app.add_url_rule("/page", "page", view)
    client = ready(app, tc)
    assert figures(client.get("/page"))[1] == 4  # stored without its figures
    fast = client.get("/page")  # the WSGI fast path: no limits by design, no stale figures
    assert fast.headers["X-Cache"] == "HIT-L1"
    assert not any(name in fast.headers for name in RATE_HEADERS + IETF)
    exempt = client.get("/page?x=1")
    assert not any(name in exempt.headers for name in RATE_HEADERS + IETF)


# -- default limits -------------------------------------------------------------------------


def test_default_limits_per_route_replaced_by_a_routes_own(
    app_factory: MakeApp, redis_url: str, tmp_path: Any
) -> None:
    (tmp_path / "logo.txt").write_text("logo")
    app, tc = app_factory(
        redis_url, static_folder=str(tmp_path), ratelimit_default="2/minute", endpoints=True
    )
    app.add_url_rule("/a", "a", ok)
    app.add_url_rule("/b", "b", ok)
    app.add_url_rule("/own", "own", tc.limit("3/minute")(ok))
    client = ready(app, tc)
    assert [client.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/b").status_code == 200  # counted per route
    assert figures(client.get("/own"))[:2] == (3, 2)
    assert [client.get("/own").status_code for _ in range(3)] == [200, 200, 429]
    # the extension's endpoints, static files and unknown URLs are not limited
    for path, status in [("/_tiered_cache/health", 200), ("/static/logo.txt", 200), ("/no", 404)]:
        for _ in range(3):
            response = client.get(path)
            assert response.status_code == status and "X-RateLimit-Limit" not in response.headers
            response.close()


def test_a_method_the_route_s_own_limits_do_not_count_gets_the_defaults(
    app_factory: MakeApp, redis_url: str
) -> None:
    """SPEC 4: the defaults apply to every route; a POST-only limit on a route must not
    leave its GETs unlimited."""
    app, tc = app_factory(redis_url, ratelimit_default="2/minute")
    view = tc.limit("5/minute", methods=["POST"])(ok)
    app.add_url_rule("/login", "login", view, methods=["GET", "POST"])
    client = ready(app, tc)
    assert [client.get("/login").status_code for _ in range(3)] == [200, 200, 429]
    assert figures(client.post("/login"))[:2] == (5, 4)  # its own limit, not the default
    # The same limit text for both counts each apart (they would share keys otherwise).
    app, tc = app_factory(redis_url, ratelimit_default="2/minute")
    view = tc.limit("2/minute", methods=["POST"])(ok)
    app.add_url_rule("/same", "same", view, methods=["GET", "POST"])
    client = ready(app, tc)
    assert [client.get("/same").status_code for _ in range(3)] == [200, 200, 429]
    assert [client.post("/same").status_code for _ in range(3)] == [200, 200, 429]


def test_a_limit_written_above_the_route_is_pointed_out(make_app: MakeApp, caplog: Any) -> None:
    """Flask registers the function below ``@tc.limit`` then, and the limit never runs:
    the first request's log says so (a limit that silently does nothing is worse)."""
    app, tc = make_app()

    @tc.limit("2/minute")
    @app.route("/above")
    def above() -> str:
        return "ok"

    app.add_url_rule("/bare", "bare", ok)  # a function also limited elsewhere: no warning
    app.add_url_rule("/own", "own", tc.limit("2/minute")(ok))
    client = ready(app, tc)
    client.get("/bare")
    assert "@tc.limit on test_a_limit_written_above_the_route_is_pointed_out" in caplog.text
    assert caplog.text.count("is not applied") == 1


def test_limits_on_the_methods_of_a_class_based_view(make_app: MakeApp) -> None:
    """Each limited method of a ``MethodView`` counts its own requests only."""
    from flask.views import MethodView

    app, tc = make_app()

    class Login(MethodView):
        def get(self) -> str:
            return "form"

        @tc.limit("2/minute")
        def post(self) -> str:
            return "signed in"

        @tc.limit("2/minute")
        def delete(self) -> str:
            return "signed out"

    app.add_url_rule("/login", view_func=Login.as_view("login"))
    client = ready(app, tc)
    assert [client.post("/login").status_code for _ in range(3)] == [200, 200, 429]
    assert [client.get("/login").status_code for _ in range(3)] == [200] * 3
    assert [client.delete("/login").status_code for _ in range(3)] == [200, 200, 429]


def test_a_class_based_view_with_limits_on_the_class_and_on_a_method(make_app: MakeApp) -> None:
    """The class's ``decorators`` limit every method, and a method's own limit its own
    requests too: the method's was dropped whenever the class had any."""
    from flask.views import MethodView

    app, tc = make_app()

    class Search(MethodView):
        decorators = (tc.limit("4/minute"),)

        @tc.limit("2/minute")
        def get(self) -> str:
            return "results"

        def post(self) -> str:
            return "saved"

    app.add_url_rule("/search", view_func=Search.as_view("search"))
    client = ready(app, tc)
    assert [client.get("/search").status_code for _ in range(3)] == [200, 200, 429]
    # The class's limit, checked first, counted all three (stacked limits are checked
    # one after the other, not all or nothing): one POST is left of its four.
    assert [client.post("/search").status_code for _ in range(2)] == [200, 429]


def test_methods_of_a_class_based_view_may_share_a_named_scope(make_app: MakeApp) -> None:
    """One budget for GET and POST, by design: both name the scope, one key, methods
    apart. Not two stacked limits that count one request twice."""
    from flask.views import MethodView

    app, tc = make_app()

    class Writes(MethodView):
        @tc.limit("3/minute", scope="writes")
        def put(self) -> str:
            return "put"

        @tc.limit("3/minute", scope="writes")
        def post(self) -> str:
            return "posted"

    app.add_url_rule("/writes", view_func=Writes.as_view("writes"))
    client = ready(app, tc)
    codes = [client.put("/writes").status_code, client.post("/writes").status_code]
    codes += [client.put("/writes").status_code, client.post("/writes").status_code]
    assert codes == [200, 200, 200, 429]


def test_a_limited_public_cached_route_is_pointed_out(make_app: MakeApp, caplog: Any) -> None:
    """The fast path serves its pages before any limit: by design, but not what someone
    stacking the two decorators may expect."""
    app, tc = make_app()
    app.add_url_rule("/public", "public", tc.limit("2/minute")(tc.cached(public=True)(ok)))
    app.add_url_rule("/private", "private", tc.limit("2/minute")(tc.cached()(ok)))
    client = ready(app, tc)
    client.get("/private")
    assert "public has @tc.limit and @tc.cached(public=True)" in caplog.text
    assert "private has" not in caplog.text


def test_cors_preflights_are_not_counted(app_factory: MakeApp, redis_url: str) -> None:
    """Flask answers OPTIONS itself; a browser sends one before a cross-origin POST:
    counted, every action would cost two, and a 429 to a preflight breaks CORS."""
    app, tc = app_factory(redis_url, ratelimit_default="2/minute")
    app.add_url_rule("/api", "api", tc.limit("2/minute")(ok), methods=["POST"])
    app.add_url_rule("/other", "other", ok, methods=["POST"])
    client = ready(app, tc)
    for path in ("/api", "/other"):
        assert [client.options(path).status_code for _ in range(3)] == [200] * 3
        assert [client.post(path).status_code for _ in range(3)] == [200, 200, 429]


def test_default_strategy_from_config(app_factory: MakeApp, redis_url: str) -> None:
    app, tc = app_factory(redis_url, ratelimit_default="4/minute", ratelimit_strategy="gcra")
    app.add_url_rule("/a", "a", ok)
    client = ready(app, tc)
    first = client.get("/a")
    assert re.fullmatch(r'"4/minute";r=3;t=(1[45])', first.headers["RateLimit"])  # 15 s


def test_the_same_limit_stacked_in_one_scope_is_refused(
    app_factory: MakeApp, redis_url: str
) -> None:
    """A counter is the client's key, scope, strategy and limit: two stacked decorators
    with the same limit in one scope shared it whatever their keys, so anyone could lock
    an address out by posting it as a user name, and one request counted twice."""
    from flask import request

    def by_user() -> str:
        return request.form["user"]

    _, tc = app_factory(redis_url)
    per_address = tc.limit("3/minute")
    with pytest.raises(ValueError, match="would share one counter"):
        per_address(tc.limit("3 per 60 seconds", key=by_user)(ok))
    with pytest.raises(ValueError, match="would share one counter"):
        tc.limit("5/hour;3/minute", methods=["GET"])(tc.limit("3/minute", methods=["POST"])(ok))
    tc.limit("3/minute", strategy="gcra")(tc.limit("3/minute", strategy="fixed-window")(ok))

    # Apart, as a scope keeps them, each counts its own.
    app, tc = app_factory(redis_url)
    both = tc.limit("3/minute")(tc.limit("3/minute", key=by_user, scope="login-user")(ok))
    app.add_url_rule("/login", "login", both, methods=["POST"])
    client = ready(app, tc)
    victim = {"REMOTE_ADDR": "203.0.113.7"}
    for n in range(3):
        attacker = {"REMOTE_ADDR": f"10.0.0.{n}"}
        answer = client.post("/login", data={"user": "203.0.113.7"}, environ_base=attacker)
        assert answer.status_code == 200
    assert client.post("/login", data={"user": "alice"}, environ_base=victim).status_code == 200

    # One leaves the strategy to the app, which names the other's: refused at init_app.
    app, tc = app_factory(redis_url, ratelimit_strategy="gcra")
    mixed = tc.limit("3/minute")(tc.limit("3/minute", key=by_user, strategy="gcra")(ok))
    app.add_url_rule("/mixed", "mixed", mixed, methods=["POST"])
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_RATELIMIT_STRATEGY"):
        tc.init_app(app)
    app, tc = app_factory(redis_url, ratelimit_strategy="fixed-window")
    app.add_url_rule("/mixed", "mixed", mixed, methods=["POST"])
    ready(app, tc)
    # A scope that names the endpoint is the endpoint's own scope.
    app, tc = app_factory(redis_url)
    named = tc.limit("3/minute")(tc.limit("3/minute", key=by_user, scope="login")(ok))
    app.add_url_rule("/login", "login", named, methods=["POST"])
    with pytest.raises(ValueError, match="would share one counter") as refused:
        tc.init_app(app)
    assert not isinstance(refused.value, ConfigurationError)  # no setting is to blame


def test_sliding_window_log_refuses_amounts_it_cannot_keep_cheaply(
    app_factory: MakeApp, redis_url: str
) -> None:
    """It keeps an entry per unit: a byte quota of 10 million a day made one 2 MB
    request add two million entries in one script, which stalled Redis for seconds
    (every session and cache call of every worker failed meanwhile). Refused where the
    strategy is known: at decoration, else at init_app or the first request."""
    from tiered_cache.ratelimit.limits import LOG_MAX_AMOUNT

    big = f"{LOG_MAX_AMOUNT + 1}/day"
    _, tc = app_factory(redis_url)
    with pytest.raises(ValueError, match="too large for sliding-window-log"):
        tc.limit(big, strategy="sliding-window-log")
    tc.limit(big, strategy="gcra")  # whose cost does not grow with the amount
    tc.limit(f"{LOG_MAX_AMOUNT}/day", strategy="sliding-window-log")

    app, tc = app_factory(redis_url, ratelimit_default=big)  # the default strategy: the log
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_RATELIMIT_DEFAULT"):
        tc.init_app(app)
    assert "tiered_cache" not in app.extensions  # nothing half made
    app, tc = app_factory(redis_url)
    app.add_url_rule("/upload", "upload", tc.limit(big)(ok), methods=["POST"])
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_RATELIMIT_STRATEGY"):
        tc.init_app(app)
    app, tc = app_factory(redis_url, ratelimit_strategy="sliding-window-counter")
    app.add_url_rule("/upload", "upload", tc.limit(big)(ok), methods=["POST"])
    assert ready(app, tc).post("/upload").status_code == 200
    app, tc = app_factory(redis_url)
    client = ready(app, tc)
    app.add_url_rule("/late", "late", tc.limit(big)(ok))  # decorated after init_app
    app.config["PROPAGATE_EXCEPTIONS"] = True  # else a 500, with the error in the log
    for _ in range(2):  # every request until it is fixed: the limit never runs unchecked
        with pytest.raises(ConfigurationError, match="TIERED_CACHE_RATELIMIT_STRATEGY"):
            client.get("/late")
    # One extension on two apps: each app is judged by its own routes and strategy.
    tc = TieredCache()
    first, second = Flask("first"), Flask("second")
    for one, strategy in ((first, "gcra"), (second, "sliding-window-log")):
        one.config.update(
            TIERED_CACHE_REDIS_URL=redis_url, TIERED_CACHE_RATELIMIT_STRATEGY=strategy
        )
    first.add_url_rule("/big", "big", tc.limit(big)(ok))
    second.add_url_rule("/small", "small", tc.limit("10/second")(ok))
    try:
        tc.init_app(first)
        tc.init_app(second)
        assert second.test_client().get("/small").status_code == 200
    finally:
        close_app(first)
        close_app(second)


# -- status and reset through tc.limiter ------------------------------------------------------


def test_limiter_status_and_reset(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/r", "r", tc.limit("2/minute")(ok))
    client = ready(app, tc)
    client.get("/r")
    client.get("/r")
    assert client.get("/r").status_code == 429
    with app.app_context():
        status = tc.limiter.status("2/minute", "127.0.0.1", scope="r")
        assert [s.remaining for s in status.states] == [0] and not status.admitted
        assert tc.limiter.reset("127.0.0.1") == 1
        assert tc.limiter.status("2/minute", "127.0.0.1", scope="r").states[0].remaining == 2
    assert client.get("/r").status_code == 200


# -- Redis down -----------------------------------------------------------------------------


def test_redis_killed_fail_open_admits_without_figures(
    app_factory: MakeApp, redis_server: RedisServer
) -> None:
    app, tc = app_factory(redis_server.url, breaker_failures=2)
    app.add_url_rule("/r", view_func=tc.limit("2/minute")(ok))
    client = ready(app, tc)
    assert client.get("/r").status_code == 200
    redis_server.kill()
    for _ in range(6):  # errors first, then the open breaker
        response = client.get("/r")
        assert response.status_code == 200
        assert not any(name in response.headers for name in RATE_HEADERS + IETF)
    assert app.extensions["tiered_cache"].cache.stats()["breaker_open"]


def test_redis_killed_fail_closed_refuses_with_503(
    app_factory: MakeApp, redis_server: RedisServer
) -> None:
    app, tc = app_factory(
        redis_server.url, ratelimit_fail_open=False, breaker_failures=2, breaker_reset=2.5
    )
    app.add_url_rule("/r", "r", tc.limit("2/minute")(ok))
    app.add_url_rule("/free", "free", ok)
    client = ready(app, tc)
    assert client.get("/r").status_code == 200
    redis_server.kill()
    for _ in range(6):
        response = client.get("/r")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "3"
        assert response.get_json() == {"error": "rate_limit_unavailable", "retry_after": 3}
    assert client.get("/free").status_code == 200  # unlimited routes are served


def test_redis_paused_answers_within_about_a_socket_timeout(
    app_factory: MakeApp, redis_server: RedisServer
) -> None:
    app, tc = app_factory(redis_server.url)
    app.add_url_rule("/r", view_func=tc.limit("100/minute")(ok))
    client = ready(app, tc)
    client.get("/r")
    redis_server.pause()
    try:
        started = time.monotonic()
        response = client.get("/r")
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert response.status_code == 200
    assert elapsed < 2  # one 0.25 s socket timeout; a hang guard, not a benchmark


# -- configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [("ratelimit_default", "ten per minute"), ("ratelimit_strategy", "leaky-bucket")],
)
def test_bad_configuration_is_named_at_init_app(
    make_app: MakeApp, setting: str, value: str
) -> None:
    app, tc = make_app(**{setting: value})
    with pytest.raises(ConfigurationError, match=f"TIERED_CACHE_{setting.upper()}"):
        tc.init_app(app)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"limits": "10/fortnight"}, "10/fortnight"),
        ({"limits": "0/second"}, "0/second"),
        ({"limits": "1/second", "strategy": "leaky-bucket"}, "leaky-bucket"),
        ({"limits": "1/second", "cost": -1}, "-1"),
        ({"limits": "1/second", "cost": "2"}, "'2'"),
        ({"limits": "1/second", "methods": [""]}, "methods"),
        ({"limits": "1/second", "scope": ""}, "scope"),
        ({"limits": "1/second", "key": "ip"}, "key"),
        ({"limits": "1/second;1 per 1 second"}, "same limit"),
        ({"limits": "1/second", "cost": 2}, "could ever be admitted"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration(arguments: dict[str, Any], named: str) -> None:
    tc = TieredCache()
    limits = arguments.pop("limits")
    with pytest.raises(ValueError, match=re.escape(named)):
        tc.limit(limits, **arguments)


def test_cost_above_a_limits_amount_gets_a_429_without_retry_after(make_app: MakeApp) -> None:
    """No time would admit it: no ``Retry-After``, ``"retry_after": null``; a fixed cost
    that large is refused when the view is decorated."""
    app, tc = make_app()

    def weight() -> int:
        return int(request.args.get("w", "1"))

    app.add_url_rule("/weighted", "weighted", tc.limit("5/minute", cost=weight)(ok))
    client = ready(app, tc)
    for _ in range(2):  # from Redis, then from the deny cache
        refused = client.get("/weighted?w=6")
        assert refused.status_code == 429 and "Retry-After" not in refused.headers
        assert refused.get_json() == {
            "error": "rate_limited",
            "limit": "5/minute",
            "retry_after": None,
        }
        assert "X-RateLimit-Remaining" not in refused.headers  # Redis was not asked
    assert client.get("/weighted?w=5").status_code == 200
    with pytest.raises(ValueError, match=r"cost=6.*could ever be admitted"):
        tc.limit("5/minute;100/hour", cost=6)


def test_a_never_admissible_refusal_under_a_stacked_limit_carries_no_figures(
    make_app: MakeApp,
) -> None:
    """The outer limit admitted the request; the inner one refuses a cost it could never
    take. Its 429 must not carry the outer limit's figures, which name another limit
    than its body and say there is quota left."""
    app, tc = make_app()

    def weight() -> int:
        return int(request.args["w"])

    view = tc.limit("5/minute")(tc.limit("10/minute", key=lambda: "shared", cost=weight)(ok))
    app.add_url_rule("/stacked", "stacked", view)
    client = ready(app, tc)
    refused = client.get("/stacked?w=11")
    assert refused.status_code == 429
    assert refused.get_json() == {
        "error": "rate_limited",
        "limit": "10/minute",
        "retry_after": None,
    }
    assert not [name for name, _ in refused.headers if "ratelimit" in name.lower()]
    admitted = client.get("/stacked?w=1")
    assert admitted.status_code == 200 and admitted.headers["X-RateLimit-Limit"] in {"5", "10"}


def test_cost_callable_returning_garbage_is_a_bug_of_the_app(make_app: MakeApp) -> None:
    app, tc = make_app()
    app.add_url_rule("/r", view_func=tc.limit("5/minute", cost=lambda: -3)(ok))
    client = ready(app, tc)
    app.testing = True
    with pytest.raises(ValueError, match="-3"):
        client.get("/r")


def test_limiter_needs_the_extension() -> None:
    tc = TieredCache()
    app = Flask("bare")
    with app.app_context(), pytest.raises(RuntimeError):
        _ = tc.limiter


def test_json_body_is_valid_json_and_headers_plain() -> None:
    limit = parse_limits("3/second")[0]
    from tiered_cache.ratelimit import Decision

    error = RateLimited(Decision(False, (), retry_after=0.2, refused_by=limit))
    response = error.get_response()
    assert isinstance(response, Response)
    assert json.loads(response.get_data()) == {
        "error": "rate_limited",
        "limit": "3/second",
        "retry_after": 1,
    }
    assert response.headers["Retry-After"] == "1" and response.status_code == 429
    assert isinstance(error, RateLimitExceeded) and error.retry_after == 1
