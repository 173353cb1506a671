"""``@tc.cached`` (SPEC section 3), through Flask's test client against real Redis."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import pytest
import redis
from flask import Flask, Response, g, redirect, request, request_finished, session
from flask.testing import FlaskClient

from tests.injected import fail_version_reads
from tests.waiting import until
from tiered_cache._response_entry import Page, PageDecoder, encode_page
from tiered_cache.flask_ext import TieredCache
from tiered_cache.http import etag

AppFactory = Callable[..., tuple[Flask, TieredCache]]


@pytest.fixture
def make_app(redis_url: str) -> Iterator[AppFactory]:
    """Apps on the shared Redis, each with its own extension; caches closed after."""
    made: list[Flask] = []
    clients: list[redis.Redis] = []

    def make(*, flask_session: bool = False, **config: Any) -> tuple[Flask, TieredCache]:
        app = Flask(f"app{len(made)}")
        app.config.update(SECRET_KEY="not-so-secret", TIERED_CACHE_REDIS_URL=redis_url)
        app.config.update(TIERED_CACHE_TTL_JITTER=0)
        app.config.update(config)
        if flask_session:
            from flask_session import Session

            client = redis.Redis.from_url(redis_url)
            clients.append(client)
            app.config.update(SESSION_TYPE="redis", SESSION_REDIS=client)
            Session(app)
        tc = TieredCache(app)
        made.append(app)
        return app, tc

    yield make
    for app in made:
        TieredCache.state(app).cache.close()
    for client in clients:
        client.close()


def add_login(app: Flask) -> None:
    """``/login/<name>`` puts the user in the session (and sets the cookie)."""

    @app.route("/login/<name>")
    def login(name: str) -> str:
        session["user_id"] = name
        return "ok"


def xcache(response: Any) -> str | None:
    return response.headers.get("X-Cache")  # type: ignore[no-any-return]


# -- the basics: miss, hit, Age, ETag, HEAD, 304, other methods --------------------------


def counting_app(
    make_app: AppFactory, config: dict[str, Any] | None = None, **options: Any
) -> tuple[Flask, Counter[str]]:
    app, tc = make_app(**(config or {}))
    calls: Counter[str] = Counter()

    @app.route("/page", methods=["GET", "POST"])
    @tc.cached(**options)
    def page() -> str:
        calls["page"] += 1
        return f"page {calls['page']}"

    return app, calls


def test_miss_then_hit_l1_with_age_and_etag(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app)
    client = app.test_client()
    first = client.get("/page")
    assert (xcache(first), first.text, first.headers.get("Age")) == ("MISS", "page 1", None)
    assert first.headers["ETag"].startswith('"')  # strong, from the body
    second = client.get("/page")
    assert (xcache(second), second.text, second.headers["Age"]) == ("HIT-L1", "page 1", "0")
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert calls["page"] == 1


def test_age_counts_seconds_since_stored(make_app: AppFactory) -> None:
    app, _ = counting_app(make_app)
    client = app.test_client()
    client.get("/page")
    time.sleep(1.05)
    assert int(client.get("/page").headers["Age"]) >= 1


def test_age_is_whole_seconds_and_never_negative() -> None:
    page = Page("200 OK", (), (), b"", None, 1000.0, (), "", True, True)
    assert [page.age(1000.0 + s) for s in (0.4, 1.0, 5.9)] == [
        ("Age", "0"),
        ("Age", "1"),
        ("Age", "5"),
    ]
    # Stored by a host whose clock is ahead of this one's.
    assert page.age(997.0) == ("Age", "0")


@pytest.mark.parametrize("public", [False, True])
def test_rate_limit_figures_are_never_replayed_from_a_page(
    make_app: AppFactory, public: bool
) -> None:
    """They describe one delivery: a hit through Flask gets its own (the after_request
    hook runs again); a fast-path hit, which skips limits, carries none."""
    app, calls = counting_app(make_app, public=public)
    remaining = iter(range(99, 0, -1))

    @app.after_request
    def figures(response: Any) -> Any:
        value = str(next(remaining))
        response.headers["X-RateLimit-Remaining"] = value
        response.headers["RateLimit"] = f'"default";r={value};t=60'
        return response

    client = app.test_client()
    assert client.get("/page").headers["X-RateLimit-Remaining"] == "99"
    hit = client.get("/page")
    assert xcache(hit) == "HIT-L1" and calls["page"] == 1
    if public:
        assert "X-RateLimit-Remaining" not in hit.headers and "RateLimit" not in hit.headers
    else:
        assert hit.headers.getlist("X-RateLimit-Remaining") == ["98"]
        assert hit.headers.getlist("RateLimit") == ['"default";r=98;t=60']


def test_a_second_app_on_the_same_redis_gets_hit_l2(make_app: AppFactory) -> None:
    first, first_calls = counting_app(make_app)
    second, second_calls = counting_app(make_app)
    assert xcache(first.test_client().get("/page")) == "MISS"
    hit = second.test_client().get("/page")
    assert (xcache(hit), hit.text) == ("HIT-L2", "page 1")
    assert xcache(second.test_client().get("/page")) == "HIT-L1"
    assert (first_calls["page"], second_calls["page"]) == (1, 0)


def test_head_is_answered_from_the_get_entry(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app)
    client = app.test_client()
    got = client.get("/page")
    head = client.head("/page")
    assert (xcache(head), head.data, calls["page"]) == ("HIT-L1", b"", 1)
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    assert head.headers["ETag"] == got.headers["ETag"]


def test_a_head_miss_runs_the_view_but_stores_nothing(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app)
    client = app.test_client()
    assert xcache(client.head("/page")) == "MISS"
    assert xcache(client.get("/page")) == "MISS"
    assert calls["page"] == 2


def test_if_none_match_gets_304_without_running_the_view(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app)
    client = app.test_client()
    etag = client.get("/page").headers["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        answer = client.get("/page", headers={"If-None-Match": header})
        assert (answer.status_code, answer.data, xcache(answer)) == (304, b"", "HIT-L1")
        assert answer.headers["ETag"] == etag
    stale = client.get("/page", headers={"If-None-Match": '"other"'})
    assert (stale.status_code, stale.text) == (200, "page 1")
    assert calls["page"] == 1


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_client_s_no_cache_and_if_modified_since_are_answered_from_the_page(
    make_app: AppFactory, public: bool
) -> None:
    """README "Choices": a client's no-cache does not run the view (anyone could make it
    run on every request), and If-Modified-Since alone gets the whole page on a hit."""
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/dated")
    @tc.cached(public=public)
    def dated() -> Response:
        calls["dated"] += 1
        return Response("dated", headers={"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"})

    client = app.test_client()
    client.get("/dated")
    for headers in (
        {"Cache-Control": "no-cache"},
        {"Pragma": "no-cache"},
        {"Cache-Control": "max-age=0"},
        {"If-Modified-Since": "Thu, 22 Oct 2015 07:28:00 GMT"},
    ):
        answer = client.get("/dated", headers=headers)
        assert (answer.status_code, answer.text, xcache(answer)) == (200, "dated", "HIT-L1")
    assert calls["dated"] == 1


def constant_app(make_app: AppFactory) -> tuple[Flask, TieredCache]:
    """``/constant``: the same body every time, so every miss makes the same ETag."""
    app, tc = make_app()

    @app.route("/constant")
    @tc.cached()
    def constant() -> str:
        return "always the same"

    return app, tc


def test_if_none_match_on_a_miss_gets_304_too(make_app: AppFactory) -> None:
    app, tc = constant_app(make_app)
    client = app.test_client()
    etag = client.get("/constant").headers["ETag"]
    with app.app_context():
        tc.clear()
    answer = client.get("/constant", headers={"If-None-Match": etag})
    # The view ran again (the page was cleared) and made the same body: same strong ETag.
    assert (answer.status_code, answer.data, xcache(answer)) == (304, b"", "MISS")
    assert xcache(client.get("/constant")) == "HIT-L1"


def test_a_miss_answers_if_none_match_as_a_hit_does_and_leaves_if_match_alone(
    make_app: AppFactory,
) -> None:
    """RFC 9110 13.1.1: ``If-Match: *`` is true of any page. werkzeug's make_conditional,
    which a miss used, answered it with a 412 (and the body) when If-None-Match came too;
    a hit answers If-None-Match alone. Both answer alike now."""
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/constant")
    @tc.cached()
    def constant() -> Response:
        calls["constant"] += 1
        return Response(
            "always the same", headers={"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"}
        )

    client = app.test_client()
    both = {"If-None-Match": '"some-other-tag"', "If-Match": "*"}
    miss, hit = client.get("/constant", headers=both), client.get("/constant", headers=both)
    assert [(r.status_code, r.text, xcache(r)) for r in (miss, hit)] == [
        (200, "always the same", "MISS"),
        (200, "always the same", "HIT-L1"),
    ]
    with app.app_context():
        tc.clear()
    etag = hit.headers["ETag"]
    # If-Modified-Since alone would get the page (README "Choices"); here its date says
    # "modified", and If-None-Match, which RFC 9110 says to answer first, says not.
    dated = {"If-None-Match": etag, "If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}
    miss, hit = client.get("/constant", headers=dated), client.get("/constant", headers=dated)
    assert [(r.status_code, r.data, xcache(r)) for r in (miss, hit)] == [
        (304, b"", "MISS"),
        (304, b"", "HIT-L1"),
    ]
    assert miss.headers["ETag"] == hit.headers["ETag"] == etag
    assert calls["constant"] == 2


def test_a_head_miss_carries_the_etag_and_304_of_the_get(make_app: AppFactory) -> None:
    app, _ = constant_app(make_app)
    client = app.test_client()
    head = client.head("/constant")
    assert xcache(head) == "MISS"  # HEAD is never stored
    again = client.head("/constant", headers={"If-None-Match": head.headers["ETag"]})
    assert (again.status_code, xcache(again)) == (304, "MISS")
    get = client.get("/constant")
    assert (xcache(get), get.headers["ETag"]) == ("MISS", head.headers["ETag"])


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_hit_sends_location_as_a_uri_as_the_miss_did(make_app: AppFactory, public: bool) -> None:
    """werkzeug makes ``Location`` and ``Content-Location`` URIs as it sends them; a page
    stored them as the view set them, and the fast path sent a space and raw UTF-8."""
    app, tc = make_app()

    @app.route("/go")
    @tc.cached(public=public, status_codes=(200, 302))
    def go() -> Response:
        response = redirect("/café menu")
        response.headers["Content-Location"] = "/docs/é"
        return response

    client = app.test_client()
    answers = [client.get("/go") for _ in range(3)]
    assert [xcache(answer) for answer in answers] == ["MISS", "HIT-L1", "HIT-L1"]
    for answer in answers:
        assert answer.headers["Location"] == "/caf%C3%A9%20menu"
        assert answer.headers["Content-Location"] == "/docs/%C3%A9"


def test_etag_false_leaves_validation_to_the_view(make_app: AppFactory) -> None:
    app, _ = counting_app(make_app, etag=False)
    client = app.test_client()
    assert "ETag" not in client.get("/page").headers
    answer = client.get("/page", headers={"If-None-Match": "*"})
    assert (answer.status_code, xcache(answer)) == (200, "HIT-L1")


def test_a_view_that_sets_its_own_etag_keeps_it(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/tagged")
    @tc.cached()
    def tagged() -> Response:
        response = Response("body")
        response.set_etag("v1", weak=True)
        return response

    client = app.test_client()
    assert client.get("/tagged").headers["ETag"] == 'W/"v1"'
    assert client.get("/tagged").headers["ETag"] == 'W/"v1"'
    assert client.get("/tagged", headers={"If-None-Match": '"v1"'}).status_code == 304


def test_other_methods_run_the_view_untouched(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app)
    client = app.test_client()
    client.get("/page")
    for _ in range(2):
        posted = client.post("/page")
        assert "X-Cache" not in posted.headers
    assert calls["page"] == 3
    assert client.get("/page").text == "page 1"


def hooked_page(make_app: AppFactory, hook: Callable[[Response], Response]) -> Flask:
    """An app whose cached ``/page`` says "body", with ``hook`` as its after_request hook."""
    app, tc = make_app()

    @app.get("/page")
    @tc.cached(timeout=60)
    def page() -> str:
        return "body"

    app.after_request(hook)
    return app


def test_a_hit_s_headers_are_what_werkzeug_would_send(make_app: AppFactory) -> None:
    """Hits skip werkzeug's second check of their headers, never its fixes."""
    classes: list[type] = []

    class AppResponse(Response):
        pass

    def hook(response: Response) -> Response:
        classes.append(type(response))
        if request.args.get("moved"):
            response.headers["Location"] = "/ünïcode"  # werkzeug makes it a URI
        if request.headers.get("X-Empty"):
            response.status_code = 204  # werkzeug drops Content-Length
        return response

    app = hooked_page(make_app, hook)
    app.response_class = AppResponse
    client = app.test_client()
    miss = client.get("/page")
    hit = client.get("/page")
    assert hit.headers["X-Cache"] == "HIT-L1" and hit.data == b"body"
    assert sorted(hit.headers.keys()) == sorted([*miss.headers.keys(), "Age"])
    assert hit.headers["Content-Length"] == "4"
    assert all(issubclass(c, AppResponse) for c in classes)  # the app's class, for hooks

    client.get("/page?moved=1")
    moved = client.get("/page?moved=1")
    assert moved.headers["X-Cache"] == "HIT-L1"
    assert moved.headers["Location"] == "/%C3%BCn%C3%AFcode"
    # A hook turning a hit of the stored 200 page into a 204: no Content-Length.
    empty = client.get("/page", headers={"X-Empty": "1"})
    assert (empty.status_code, xcache(empty)) == (204, "HIT-L1")
    assert "Content-Length" not in empty.headers


def test_lines_a_hook_adds_go_out_once_on_a_hit_through_flask(make_app: AppFactory) -> None:
    """A hook that adds lines (``headers.add``) added them on the miss, and the page kept
    them: on a hit through Flask the hook runs again, and each went out twice (a doubled
    ``Access-Control-Allow-Origin`` makes browsers refuse the answer). What the page
    holds twice still goes out twice, and a line the hook adds anew goes out."""
    served = 0

    def hook(response: Response) -> Response:
        nonlocal served
        served += 1
        response.headers.add("Access-Control-Allow-Origin", "*")
        response.headers.add("Link", "</a.css>; rel=preload")
        response.headers.add("Link", "</a.css>; rel=preload")
        response.headers.add("X-Served", str(served))
        return response

    app = hooked_page(make_app, hook)
    client = app.test_client()
    miss = client.get("/page")
    hit = client.get("/page")
    assert xcache(hit) == "HIT-L1"
    for response in (miss, hit):
        assert response.headers.getlist("Access-Control-Allow-Origin") == ["*"]
        assert response.headers.getlist("Link") == ["</a.css>; rel=preload"] * 2
    assert hit.headers.getlist("X-Served") == ["1", "2"]  # the page's, and the hook's own
    not_modified = client.get("/page", headers={"If-None-Match": miss.headers["ETag"]})
    assert (not_modified.status_code, xcache(not_modified)) == (304, "HIT-L1")
    assert not_modified.headers.getlist("Access-Control-Allow-Origin") == ["*"]


def test_list_lines_a_hook_adds_go_out_once_on_a_hit_through_flask(make_app: AppFactory) -> None:
    """The page was stored with its Vary and Cache-Control lines joined into one (a hook's
    ``Vary: Origin``, as flask-cors adds it, inside ``Vary: Accept-Encoding, Origin``): the
    hook's line again on a hit repeats it. A hook that replaces the line is obeyed."""
    app, tc = make_app()

    @app.get("/page")
    @tc.cached(timeout=60)
    def page() -> Response:
        response = Response("body")
        response.headers["Vary"] = "Accept-Encoding"
        response.cache_control.max_age = 60
        return response

    @app.after_request
    def cors(response: Response) -> Response:
        if request.headers.get("X-Replace"):
            response.headers["Vary"] = "Origin"
        else:
            response.headers.add("Vary", "Origin")
        response.headers.add("Cache-Control", "public")
        return response

    client = app.test_client()
    miss = client.get("/page")
    for hit in (client.get("/page"), client.head("/page")):
        assert xcache(hit) == "HIT-L1"
        assert hit.headers.getlist("Vary") == miss.headers.getlist("Vary")
        assert hit.headers.getlist("Cache-Control") == miss.headers.getlist("Cache-Control")
    assert len(miss.headers.getlist("Vary")) == len(miss.headers.getlist("Cache-Control")) == 1
    replaced = client.get("/page", headers={"X-Replace": "1"})  # the same page, a hit
    assert xcache(replaced) == "HIT-L1" and replaced.headers.getlist("Vary") == ["Origin"]


def test_a_hit_s_body_is_sent_as_it_is_unless_a_hook_needs_werkzeug(
    make_app: AppFactory,
) -> None:
    """A hit's body skips werkzeug's encoding and closing wrappers, never what they do:
    callbacks registered with ``call_on_close`` run, a body a hook replaced is sent."""
    closed: list[str] = []

    def hook(response: Response) -> Response:
        if request.args.get("close"):
            response.call_on_close(lambda: closed.append("closed"))
        if request.args.get("text"):
            response.response = ["text, encoded by werkzeug"]
        if request.args.get("bytes"):
            response.set_data(b"replaced")
        return response

    client = hooked_page(make_app, hook).test_client()
    queries = ("", "close=1", "text=1", "bytes=1")
    for query in queries:
        client.get(f"/page?{query}", buffered=True)  # buffered: the client closes it
    assert closed == ["closed"]
    answers = {query: client.get(f"/page?{query}", buffered=True) for query in queries}
    assert {xcache(answer) for answer in answers.values()} == {"HIT-L1"}
    assert answers[""].data == answers["close=1"].data == b"body"
    assert closed == ["closed", "closed"]
    assert answers["text=1"].data == b"text, encoded by werkzeug"
    assert answers["bytes=1"].data == b"replaced"
    assert answers["bytes=1"].headers["Content-Length"] == "8"
    assert client.head("/page?close=1", buffered=True).data == b"" and len(closed) == 3


# -- what is never stored -----------------------------------------------------------------


def never_stored_app(make_app: AppFactory) -> tuple[Flask, Counter[str]]:
    app, tc = make_app()
    calls: Counter[str] = Counter()

    def counted(name: str, response: Response) -> Response:
        calls[name] += 1
        return response

    @app.route("/cookie")
    @tc.cached()
    def cookie() -> Response:
        response = counted("cookie", Response("c"))
        response.set_cookie("tracking", "1")
        return response

    @app.route("/hooked-cookie")
    @tc.cached()
    def hooked_cookie() -> Response:
        return counted("hooked-cookie", Response("h"))

    @app.after_request
    def add_cookie(response: Response) -> Response:
        if request.path == "/hooked-cookie":
            response.set_cookie("late", "1")
        return response

    for directive in (
        "private",
        "no-store",
        "no-cache",
        'no-cache="Set-Cookie"',
        "private, max-age=60",
        "Private",  # directive names are case-insensitive (RFC 9111 5.2)
        "NO-STORE",
        "Public, Max-Age=60, No-Cache",
        "max-age=60;private",  # malformed (";" is no separator), meant private all the same
        "public;no-store",
        'private=""',
        'no-cache=""',
    ):
        name = "cc-" + directive.replace('"', "").replace(" ", "").replace(",", "-")
        name = name.replace(";", "-").replace("=", "-")

        def control(name: str = name, directive: str = directive) -> Response:
            return counted(name, Response("x", headers={"Cache-Control": directive}))

        app.add_url_rule("/" + name, name, tc.cached()(control))

    @app.route("/vary-star")
    @tc.cached()
    def vary_star() -> Response:
        return counted("vary-star", Response("v", headers={"Vary": "Accept, *"}))

    @app.route("/not-found")
    @tc.cached()
    def not_found() -> tuple[str, int]:
        calls["not-found"] += 1
        return "nope", 404

    @app.route("/streamed")
    @tc.cached()
    def streamed() -> Response:
        return counted("streamed", Response(iter([b"a", b"b"])))

    return app, calls


def test_responses_that_must_not_be_shared_are_never_stored(make_app: AppFactory) -> None:
    app, calls = never_stored_app(make_app)
    client = app.test_client()
    paths = [rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"]
    assert len(paths) == 17
    for path in paths:
        for _ in range(2):
            assert xcache(client.get(path)) == "MISS", path
    assert set(calls.values()) == {2}, calls
    assert client.get("/streamed").data == b"ab"


def test_status_codes_choose_what_is_stored(make_app: AppFactory) -> None:
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/gone")
    @tc.cached(status_codes=(200, 404))
    def gone() -> tuple[str, int]:
        calls["gone"] += 1
        return "gone", 404

    client = app.test_client()
    client.get("/gone")
    again = client.get("/gone")
    assert (again.status_code, xcache(again), calls["gone"]) == (404, "HIT-L1", 1)


def test_status_codes_refuses_what_is_no_page(make_app: AppFactory) -> None:
    """A 304 stored for one browser's revalidation was served, empty, to every plain GET;
    a 206 is part of a page. Both are refused where the route is written."""
    _, tc = make_app()
    for status in (304, 206, 100, 199, 600, True, "200"):
        with pytest.raises(ValueError, match=r"cached\(status_codes=\.\.\.\): .* not a status"):
            tc.cached(status_codes=(200, status))  # type: ignore[arg-type]
    tc.cached(status_codes=(200, 204, 301, 404, 599))  # all of these may be stored
    assert tc.cached(status_codes=(HTTPStatus.OK, HTTPStatus.NOT_FOUND))  # IntEnums too


# -- Authorization, unless ----------------------------------------------------------------


def test_authorization_is_never_served_from_or_stored_into_a_shared_entry(
    make_app: AppFactory,
) -> None:
    app, calls = counting_app(make_app)
    client = app.test_client()
    auth = {"Authorization": "Bearer alice"}
    assert xcache(client.get("/page", headers=auth)) == "BYPASS"
    assert xcache(client.get("/page")) == "MISS"  # alice's page was not stored
    served = client.get("/page", headers=auth)
    assert (xcache(served), served.text) == ("BYPASS", "page 3")  # nor served the shared one
    assert calls["page"] == 3


def test_public_routes_share_with_authorization(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app, public=True)
    client = app.test_client()
    assert xcache(client.get("/page", headers={"Authorization": "Basic eDp5"})) == "MISS"
    assert xcache(client.get("/page", headers={"Authorization": "Basic other"})) == "HIT-L1"
    assert calls["page"] == 1


def test_unless_bypasses_the_cache(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app, unless=lambda: request.args.get("fresh") == "1")
    client = app.test_client()
    assert xcache(client.get("/page?fresh=1")) == "BYPASS"
    assert xcache(client.get("/page?fresh=1")) == "BYPASS"
    assert xcache(client.get("/page")) == "MISS"
    assert calls["page"] == 3


# -- Vary ---------------------------------------------------------------------------------


def test_vary_accept_language_keeps_languages_apart(make_app: AppFactory) -> None:
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/hello")
    @tc.cached()
    def hello() -> Response:
        language = request.headers.get("Accept-Language", "en").strip()
        calls[language] += 1
        words = {"en": "hello", "fr": "bonjour", "de": "hallo"}
        return Response(words.get(language, "?"), headers={"Vary": "Accept-Language"})

    client = app.test_client()
    for language, word in [("en", "hello"), ("fr", "bonjour"), ("de", "hallo")] * 2:
        answer = client.get("/hello", headers={"Accept-Language": language})
        assert answer.text == word
        assert answer.headers["Vary"] == "Accept-Language"  # a hit carries the stored Vary
    assert xcache(client.get("/hello", headers={"accept-language": " fr "})) == "HIT-L1"
    assert calls == {"en": 1, "fr": 1, "de": 1}


def test_vary_option_adds_headers_to_the_key(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/tenant")
    @tc.cached(vary=("X-Tenant",))
    def tenant() -> str:
        return "tenant " + request.headers.get("X-Tenant", "-")

    client = app.test_client()
    assert client.get("/tenant", headers={"X-Tenant": "a"}).text == "tenant a"
    answer = client.get("/tenant", headers={"X-Tenant": "b"})
    assert (answer.text, xcache(answer), answer.headers["Vary"]) == ("tenant b", "MISS", "X-Tenant")
    assert xcache(client.get("/tenant", headers={"X-Tenant": "a"})) == "HIT-L1"


def test_an_absent_vary_header_matches_only_an_absent_one(make_app: AppFactory) -> None:
    # RFC 9111, section 4.1: a header absent from a request matches only a request
    # without it too, not one that sends it empty.
    app, tc = make_app()

    @app.route("/tenant")
    @tc.cached(vary=("X-Tenant",))
    def tenant() -> str:
        return "no tenant" if "X-Tenant" not in request.headers else "empty tenant"

    client = app.test_client()
    assert client.get("/tenant", headers={"X-Tenant": ""}).text == "empty tenant"
    answer = client.get("/tenant")
    assert (answer.text, xcache(answer)) == ("no tenant", "MISS")
    assert xcache(client.get("/tenant")) == "HIT-L1"
    empty = client.get("/tenant", headers={"X-Tenant": "  "})  # stripped: empty again
    assert (empty.text, xcache(empty)) == ("empty tenant", "HIT-L1")


def test_a_hooks_second_vary_line_survives_the_session_layer(make_app: AppFactory) -> None:
    # The session layer adds Cookie with werkzeug's response.vary, which reads the first
    # Vary line and writes one line in place of all: the hook's Origin (a second line, as
    # flask-cors adds it) must still key the page, or one origin gets another's CORS.
    app, tc = make_app()

    @app.route("/profile")
    @tc.cached()
    def profile() -> Response:
        name = session.get("user", "nobody")
        return Response(f"profile of {name}", headers={"Vary": "Accept-Language"})

    @app.after_request
    def cors(response: Response) -> Response:
        response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")
        response.headers.add("Vary", "Origin")
        return response

    client = app.test_client()
    first = client.get("/profile", headers={"Origin": "https://a.example"})
    assert xcache(first) == "MISS"
    assert first.headers.getlist("Vary") == ["Accept-Language, Origin, Cookie"]
    assert xcache(client.get("/profile", headers={"Origin": "https://a.example"})) == "HIT-L1"
    other = client.get("/profile", headers={"Origin": "https://b.example"})
    assert xcache(other) == "MISS"
    assert other.headers["Access-Control-Allow-Origin"] == "https://b.example"


@pytest.mark.parametrize("option", ["timeout", "stale_ttl"])
@pytest.mark.parametrize("seconds", [-1, float("nan"), 1e16])
def test_cached_refuses_durations_out_of_bounds_where_the_route_is_written(
    make_app: AppFactory, option: str, seconds: float
) -> None:
    """Not as a 500 on the route's first miss."""
    _, tc = make_app()
    with pytest.raises(ValueError, match=option):
        tc.cached(**{option: seconds})


def test_cached_refuses_a_key_prefix_namespace_or_unless_it_cannot_use(
    make_app: AppFactory,
) -> None:
    """Flask-Caching's callable key_prefix was taken, then every request raised (a 500);
    an empty namespace and an unless that is no callable likewise."""
    _, tc = make_app()
    with pytest.raises(TypeError, match=r"key_prefix=.*vary=, per_user="):
        tc.cached(key_prefix=lambda: "tenant-1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        tc.cached(namespace="")
    with pytest.raises(TypeError, match="unless"):
        tc.cached(unless=True)  # type: ignore[arg-type]
    tc.cached(key_prefix="catalogue", namespace="products", unless=lambda: False)


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_request_that_says_no_store_is_answered_but_not_stored(
    make_app: AppFactory, public: bool
) -> None:
    """RFC 9111 5.2.1.5: no cache stores any part of a no-store request's response. A
    page already stored may answer it (a cache may serve what it holds)."""
    app, tc = make_app()
    calls: list[str] = []

    @app.route("/page")
    @tc.cached(public=public)
    def page() -> str:
        calls.append("run")
        return "page"

    client = app.test_client()
    refusing = {"Cache-Control": "max-age=0, No-Store"}
    assert xcache(client.get("/page", headers=refusing)) == "MISS"
    assert xcache(client.get("/page", headers=refusing)) == "MISS"
    assert calls == ["run", "run"]
    assert xcache(client.get("/page")) == "MISS"
    assert xcache(client.get("/page", headers=refusing)) == "HIT-L1"
    assert calls == ["run", "run", "run"]


def test_a_no_store_request_does_not_refresh_a_stale_page(make_app: AppFactory) -> None:
    """Its response would be the refreshed page: it gets the stale one, and the next
    request that may be stored refreshes it."""
    app, tc = make_app()
    calls: list[str] = []

    @app.route("/stale")
    @tc.cached(timeout=0.5, stale_ttl=60)
    def stale() -> str:
        calls.append("run")
        return f"version {len(calls)}"

    client = app.test_client()
    assert client.get("/stale").text == "version 1"
    time.sleep(0.6)
    answer = client.get("/stale", headers={"Cache-Control": "no-store"})
    assert (answer.text, xcache(answer)) == ("version 1", "STALE")
    answer = client.get("/stale")
    assert (answer.text, xcache(answer)) == ("version 2", "MISS")
    assert xcache(client.get("/stale")) == "HIT-L1"


def test_the_vary_option_refuses_what_is_not_one_header_name(make_app: AppFactory) -> None:
    _, tc = make_app()
    with pytest.raises(TypeError, match="vary"):
        tc.cached(vary="X-Tenant")
    with pytest.raises(ValueError, match="vary"):
        tc.cached(vary=("Accept", "*"))
    with pytest.raises(ValueError, match="vary"):
        tc.cached(vary=(name for name in ("Accept", "*")))
    # One name no request sends: such a page would match everyone (a user's own page,
    # keyed by "Cookie" here, would reach every other user).
    for slip in ("Accept-Language, Cookie", " * ", "Cookie ", "", 42):
        with pytest.raises(ValueError, match=r"cached\(vary=\.\.\.\): .* is not a header name"):
            tc.cached(vary=("Accept", slip))  # type: ignore[arg-type]

    @tc.cached(vary=(name for name in ("X-Tenant",)))  # a generator is read once
    def tenant() -> str:
        return "tenant"

    assert tenant.__tiered_cache_route__.vary == ("X-Tenant",)  # type: ignore[attr-defined]


def test_a_variant_is_found_by_another_app(make_app: AppFactory) -> None:
    apps = []
    for _ in range(2):
        app, tc = make_app()

        @app.route("/hello")
        @tc.cached()
        def hello() -> Response:
            return Response(request.headers["Accept-Language"], headers={"Vary": "Accept-Language"})

        apps.append(app)
    apps[0].test_client().get("/hello", headers={"Accept-Language": "fr"})
    answer = apps[1].test_client().get("/hello", headers={"Accept-Language": "fr"})
    assert (answer.text, xcache(answer)) == ("fr", "HIT-L2")
    assert xcache(apps[1].test_client().get("/hello", headers={"Accept-Language": "it"})) == "MISS"


# -- sessions: a page that read the session is never served to another user -------------------


def session_app(make_app: AppFactory, **config: Any) -> tuple[Flask, Counter[str]]:
    app, tc = make_app(**config)
    add_login(app)
    calls: Counter[str] = Counter()

    @app.route("/me")
    @tc.cached()
    def me() -> str:
        calls["me"] += 1
        return f"hello {session.get('user_id', 'stranger')}"

    @app.route("/member")
    @tc.cached()
    def member() -> str:
        calls["member"] += 1
        return "member" if "user_id" in session else "guest"  # a read that is not a get()

    @app.route("/who")
    @tc.cached()
    def who() -> str:
        return f"hello {g.user}"

    @app.before_request
    def load_user() -> None:
        if request.path == "/who":
            g.user = session.get("user_id", "stranger")

    @app.route("/static-page")
    @tc.cached()
    def static_page() -> str:
        calls["static"] += 1
        return "the same for everyone"

    @app.route("/visits")
    @tc.cached()
    def visits() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return f"visit {session['visits']}"

    return app, calls


SESSION_KINDS = [
    pytest.param({}, id="flask-cookie-session"),
    # flask-session re-sends the cookie of a permanent session on every response by
    # default (SESSION_REFRESH_EACH_REQUEST), which makes every such page unstorable.
    pytest.param(
        {"flask_session": True, "SESSION_REFRESH_EACH_REQUEST": False}, id="flask-session-redis"
    ),
]


@pytest.mark.parametrize("kind", SESSION_KINDS)
def test_two_users_never_see_each_others_page(make_app: AppFactory, kind: dict[str, Any]) -> None:
    app, calls = session_app(make_app, **kind)
    alice, bob, stranger = app.test_client(), app.test_client(), app.test_client()
    alice.get("/login/alice")
    bob.get("/login/bob")
    for _ in range(2):
        for path, expect in [("/me", "hello {}"), ("/who", "hello {}")]:
            assert alice.get(path).text == expect.format("alice")
            assert bob.get(path).text == expect.format("bob")
            assert stranger.get(path).text == expect.format("stranger")
        assert alice.get("/member").text == "member"
        assert stranger.get("/member").text == "guest"
    hit = alice.get("/me")
    assert (xcache(hit), hit.headers["Vary"]) == ("HIT-L1", "Cookie")
    assert (calls["me"], calls["member"]) == (3, 2)  # each cookie once


@pytest.mark.parametrize("kind", SESSION_KINDS)
def test_a_page_that_does_not_read_the_session_is_shared(
    make_app: AppFactory, kind: dict[str, Any]
) -> None:
    # The session layer's own reads while saving (``permanent``) do not count.
    app, calls = session_app(make_app, **kind)
    alice, bob = app.test_client(), app.test_client()
    alice.get("/login/alice")
    bob.get("/login/bob")
    assert xcache(alice.get("/static-page")) == "MISS"
    shared = bob.get("/static-page")
    assert (xcache(shared), calls["static"]) == ("HIT-L1", 1)
    assert "Cookie" not in shared.headers.get("Vary", "")


def test_a_session_read_by_a_view_of_another_app_is_keyed_alike(make_app: AppFactory) -> None:
    first, _ = session_app(make_app)
    second, _ = session_app(make_app)
    alice, bob = first.test_client(), first.test_client()
    alice.get("/login/alice")
    bob.get("/login/bob")
    assert alice.get("/me").text == "hello alice"
    # The same signed cookie sent to the second app finds alice's page, bob's does not.
    cookie = alice.get_cookie("session")
    assert cookie is not None
    other = second.test_client()
    other.set_cookie("session", cookie.value)
    found = other.get("/me")
    assert (found.text, xcache(found)) == ("hello alice", "HIT-L2")
    bob_there = second.test_client()
    bob_cookie = bob.get_cookie("session")
    assert bob_cookie is not None
    bob_there.set_cookie("session", bob_cookie.value)
    assert bob_there.get("/me").text == "hello bob"


def test_per_user_keys_pages_by_user(make_app: AppFactory) -> None:
    app, tc = make_app()
    add_login(app)
    seen: list[str] = []

    @app.route("/dashboard")
    @tc.cached(per_user=True)
    def dashboard() -> str:
        # Not read from the session here: per_user alone must keep users apart.
        seen.append(request.path)
        return f"dashboard {len(seen)}"

    alice, bob, anon1, anon2 = (app.test_client() for _ in range(4))
    alice.get("/login/alice")
    bob.get("/login/bob")
    assert alice.get("/dashboard").text == "dashboard 1"
    assert bob.get("/dashboard").text == "dashboard 2"
    assert anon1.get("/dashboard").text == "dashboard 3"
    again = alice.get("/dashboard")
    assert (again.text, xcache(again), again.headers["Vary"]) == ("dashboard 1", "HIT-L1", "Cookie")
    assert bob.get("/dashboard").text == "dashboard 2"
    assert (anon2.get("/dashboard").text, len(seen)) == ("dashboard 3", 3)  # anonymous share


# -- keys, namespaces, timeouts, bodies -----------------------------------------------------------


def test_query_strings_are_keyed_sorted_or_ignored(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/q")
    @tc.cached()
    def q() -> str:
        return "q " + request.query_string.decode()

    @app.route("/no-q")
    @tc.cached(query_string=False)
    def no_q() -> str:
        return "no-q " + request.query_string.decode()

    client = app.test_client()
    assert client.get("/q?a=1&b=2").text == "q a=1&b=2"
    assert (client.get("/q?b=2&a=1").text, client.get("/q?a=3").text) == ("q a=1&b=2", "q a=3")
    assert client.get("/no-q?x=1").text == client.get("/no-q?y=2").text == "no-q x=1"


def test_key_prefix_shares_one_page_between_paths(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/a")
    @app.route("/b")
    @tc.cached(key_prefix="menu")
    def menu() -> str:
        return "menu from " + request.path

    client = app.test_client()
    assert client.get("/a").text == client.get("/b").text == "menu from /a"


def test_namespace_invalidation_drops_pages(make_app: AppFactory) -> None:
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/catalogue")
    @tc.cached(namespace="catalogue")
    def catalogue() -> str:
        calls["catalogue"] += 1
        return f"catalogue {calls['catalogue']}"

    client = app.test_client()
    client.get("/catalogue")
    assert xcache(client.get("/catalogue")) == "HIT-L1"
    with app.app_context():
        tc.invalidate_namespace("catalogue")
    assert client.get("/catalogue").text == "catalogue 2"


def test_a_page_made_before_an_invalidation_is_not_served_after_it(
    make_app: AppFactory,
) -> None:
    """The miss reads the data, a write invalidates the namespace, then the miss stores
    what it read: stored under the version it looked up, that page is never served."""
    app, tc = make_app()
    price = ["old"]
    read, release = threading.Event(), threading.Event()

    @app.route("/product")
    @tc.cached(namespace="products")
    def product() -> str:
        seen = price[0]
        read.set()
        release.wait(10)
        return f"price {seen}"

    client = app.test_client()
    slow = concurrent.futures.ThreadPoolExecutor(1).submit(lambda: client.get("/product").text)
    assert read.wait(10)
    price[0] = "new"  # the write, then its invalidation, while the miss is in flight
    with app.app_context():
        tc.invalidate_namespace("products")
    release.set()
    assert slow.result(10) == "price old"  # that request answers what it read
    response = client.get("/product")
    assert (xcache(response), response.text) == ("MISS", "price new")
    assert xcache(client.get("/product")) == "HIT-L1"


def test_a_miss_whose_namespace_version_was_guessed_stores_nothing(
    make_app: AppFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis could not give the namespace's version (the read failed, the next would
    # work): the view runs longer than the thread holds off Redis, then its page must not
    # be stored under the guessed version, where no invalidation reaches it.
    app, tc = make_app()

    @app.route("/slow")
    @tc.cached(namespace="slow")
    def slow() -> str:
        time.sleep(0.4)  # socket_timeout (the hold-off) is 0.25 s
        return "slow page"

    fail_version_reads(monkeypatch, 1)
    client = app.test_client()
    assert xcache(client.get("/slow")) == "MISS"
    with app.app_context():
        guessed_space = tc.cache._layout.space("slow", 0)
    assert redis.Redis.from_url(redis_url).keys(guessed_space + "*") == []
    assert xcache(client.get("/slow")) == "MISS"  # the real version this time: stored
    assert xcache(client.get("/slow")) == "HIT-L1"


def test_timeout_expires_pages(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app, timeout=1)
    client = app.test_client()
    client.get("/page")
    assert xcache(client.get("/page")) == "HIT-L1"
    time.sleep(1.05)
    assert (xcache(client.get("/page")), calls["page"]) == ("MISS", 2)


def test_binary_bodies_round_trip_through_json(make_app: AppFactory) -> None:
    blob = bytes(range(256)) * 4
    apps = []
    for _ in range(2):
        app, tc = make_app()

        @app.route("/blob")
        @tc.cached()
        def blob_view() -> Response:
            return Response(blob, mimetype="application/octet-stream")

        apps.append(app)
    assert apps[0].test_client().get("/blob").data == blob
    answer = apps[1].test_client().get("/blob")
    assert (answer.data, xcache(answer)) == (blob, "HIT-L2")


def test_async_views_are_cached(make_app: AppFactory) -> None:
    pytest.importorskip("asgiref")
    app, tc = make_app()

    @app.route("/async")
    @tc.cached()
    async def async_view() -> str:
        return "async"

    client = app.test_client()
    assert client.get("/async").text == "async"
    assert xcache(client.get("/async")) == "HIT-L1"


# -- stale_ttl ----------------------------------------------------------------------------------


def test_stale_page_is_served_while_one_request_refreshes_it(
    make_app: AppFactory, r: redis.Redis
) -> None:
    app, tc = make_app()
    version = {"n": 1}
    entered, proceed = threading.Event(), threading.Event()

    @app.route("/news")
    @tc.cached(timeout=1, stale_ttl=30)
    def news() -> str:
        if version["n"] > 1:
            entered.set()
            assert proceed.wait(10)
        return f"news {version['n']}"

    client = app.test_client()
    assert client.get("/news").text == "news 1"
    time.sleep(1.05)
    version["n"] = 2
    refreshed: list[Any] = []
    refresher = threading.Thread(target=lambda: refreshed.append(app.test_client().get("/news")))
    refresher.start()
    assert entered.wait(10)
    stale = client.get("/news")  # the refresher holds the lock: the old page, marked
    assert (stale.text, xcache(stale)) == ("news 1", "STALE")
    with app.app_context():
        assert tc.stats()["stale_served"] >= 1
    proceed.set()
    refresher.join(10)
    assert (refreshed[0].text, xcache(refreshed[0])) == ("news 2", "MISS")
    fresh = client.get("/news")
    assert (fresh.text, xcache(fresh)) == ("news 2", "HIT-L1")
    assert r.keys("*#lock") == []  # the refresher's lock is let go, not marked by its page


def test_a_refreshed_page_that_varies_refreshes_its_index_too(make_app: AppFactory) -> None:
    # The index (the route's Vary names) and the page expire together: a refresh that
    # wrote only the page would leave the index stale, read from Redis on every request.
    app, tc = make_app()
    version = {"n": 1}

    @app.route("/greeting")
    @tc.cached(timeout=1, stale_ttl=30)
    def greeting() -> Response:
        return Response(f"hello {version['n']}", headers={"Vary": "Accept-Language"})

    client = app.test_client()
    english = {"Accept-Language": "en"}
    assert client.get("/greeting", headers=english).text == "hello 1"
    time.sleep(1.05)
    version["n"] = 2
    refreshed = client.get("/greeting", headers=english)
    assert (refreshed.text, xcache(refreshed)) == ("hello 2", "MISS")
    again = client.get("/greeting", headers=english)
    assert (again.text, xcache(again)) == ("hello 2", "HIT-L1")


def test_the_index_lives_as_long_as_the_last_page_stored_under_it(
    make_app: AppFactory,
) -> None:
    app, tc = make_app()

    @app.route("/greeting")
    @tc.cached(timeout=2, stale_ttl=30)
    def greeting() -> Response:
        language = request.headers["Accept-Language"]
        return Response(f"hello in {language}", headers={"Vary": "Accept-Language"})

    client = app.test_client()
    assert xcache(client.get("/greeting", headers={"Accept-Language": "en"})) == "MISS"
    time.sleep(1.2)
    french = {"Accept-Language": "fr"}
    assert xcache(client.get("/greeting", headers=french)) == "MISS"
    time.sleep(0.9)  # the English page (and the index it wrote) past its time; French not
    assert xcache(client.get("/greeting", headers=french)) == "HIT-L1"


def test_a_stale_page_whose_refresh_fails_releases_the_lock(make_app: AppFactory) -> None:
    app, tc = make_app()
    state = {"fail": False, "n": 0}

    @app.route("/flaky")
    @tc.cached(timeout=1, stale_ttl=30)
    def flaky() -> str:
        state["n"] += 1
        if state["fail"]:
            raise RuntimeError("backend down")
        return f"flaky {state['n']}"

    client = app.test_client()
    client.get("/flaky")
    time.sleep(1.05)
    state["fail"] = True
    assert client.get("/flaky").status_code == 500
    state["fail"] = False
    # The lock is free again: the next request refreshes instead of serving STALE.
    assert until(lambda: xcache(client.get("/flaky")) in ("MISS", "HIT-L1"), 2.0)


def test_a_refresh_that_never_reaches_request_finished_releases_the_lock(
    make_app: AppFactory,
) -> None:
    """An after_request hook that fails, and fails again on the error page: Flask logs it
    and never sends request_finished. The extension's WSGI wrapper lets the lock go."""
    app, tc = make_app()
    state = {"broken": False, "n": 0}

    @app.route("/fragile")
    @tc.cached(timeout=1, stale_ttl=30)
    def fragile() -> str:
        state["n"] += 1
        return f"fragile {state['n']}"

    @app.after_request
    def hook(response: Response) -> Response:
        if state["broken"]:
            raise RuntimeError("hook broken")
        return response

    client = app.test_client()
    client.get("/fragile")
    time.sleep(1.05)
    state["broken"] = True
    assert client.get("/fragile").status_code == 500  # it held the refresh lock
    state["broken"] = False
    response = client.get("/fragile")  # not STALE: the lock is free, this one refreshes
    assert (xcache(response), response.text) == ("MISS", "fragile 3")


def test_the_get_that_checks_a_put_precondition_releases_the_refresh_lock(
    make_app: AppFactory,
) -> None:
    """tiered_cache.http runs the GET view in a request context of its own to learn the
    current ETag; a stale page's refresh started there lets its lock go."""
    app, tc = make_app()
    state = {"n": 0}

    @app.route("/doc", methods=["GET", "PUT"])
    @etag
    @tc.cached(timeout=1, stale_ttl=30)
    def doc() -> str:
        if request.method == "PUT":
            return "written"
        state["n"] += 1
        return f"doc {state['n']}"

    client = app.test_client()
    client.get("/doc")
    time.sleep(1.05)
    assert client.put("/doc", headers={"If-Match": "*"}).text == "written"
    response = client.get("/doc")
    assert xcache(response) == "MISS"


@pytest.mark.parametrize("stale_ttl", [0, 60], ids=["fresh", "stale-refresh"])
def test_a_cached_view_calling_another_settles_one_miss(
    make_app: AppFactory, stale_ttl: float
) -> None:
    """The inner view runs uncached: its miss used to be replaced by the outer one's in
    the environ and never settled (request_finished stayed connected for good, and a
    refresh lock the inner one took was held until it expired)."""
    app, tc = make_app()
    calls: Counter[str] = Counter()

    def listening(app: Flask) -> bool:
        return any(True for _ in request_finished.receivers_for(app))

    @app.route("/home")
    @tc.cached(timeout=1, stale_ttl=stale_ttl)
    def home() -> str:
        calls["home"] += 1
        return "home"

    @app.route("/")
    @tc.cached(timeout=1, stale_ttl=stale_ttl)
    def index() -> str:
        calls["index"] += 1
        return f"index: {home()}"

    client = app.test_client()
    first = client.get("/")
    assert (first.text, xcache(first), dict(calls)) == (
        "index: home",
        "MISS",
        {"index": 1, "home": 1},
    )
    assert not listening(app)
    again = client.get("/")
    assert (again.text, xcache(again), calls["index"]) == ("index: home", "HIT-L1", 1)
    own = client.get("/home")  # /home's page is its own, not something index stored for it
    assert (own.text, xcache(own)) == ("home", "MISS")
    if stale_ttl:  # a refresh of the outer page: its lock is taken and let go
        for refreshes in (2, 3):
            time.sleep(1.1)
            refreshed = client.get("/")  # the request that refreshes gets its own page
            assert (refreshed.text, xcache(refreshed)) == ("index: home", "MISS")
            assert calls["index"] == refreshes
            assert not listening(app)
    assert not listening(app)


def test_misses_are_stored_by_a_receiver_connected_only_while_they_are_in_flight(
    make_app: AppFactory,
) -> None:
    """Hits pay nothing for request_finished; two overlapping misses are both stored,
    whichever finishes first."""
    app, tc = make_app()

    def listening(app: Flask) -> bool:  # has_receivers_for stays true after a disconnect
        return any(True for _ in request_finished.receivers_for(app))

    finishing, proceed = threading.Event(), threading.Event()

    @app.route("/slow")
    @tc.cached()
    def slow() -> str:
        return "slow page"

    @app.route("/quick")
    @tc.cached()
    def quick() -> str:
        return "quick page"

    @app.after_request
    def hold_the_slow_one(response: Response) -> Response:
        if request.path == "/slow" and not proceed.is_set():
            finishing.set()  # its view has returned: the miss is counted
            assert proceed.wait(10)
        return response

    client = app.test_client()
    assert not listening(app)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    slow_miss = pool.submit(lambda: app.test_client().get("/slow"))
    assert finishing.wait(10)
    assert listening(app)
    assert xcache(client.get("/quick")) == "MISS"  # starts and ends inside the slow one
    assert listening(app)  # the slow one still needs it
    proceed.set()
    assert xcache(slow_miss.result(10)) == "MISS"
    assert not listening(app)
    assert xcache(client.get("/slow")) == "HIT-L1"
    assert xcache(client.get("/quick")) == "HIT-L1"
    assert not listening(app)


# -- guards -------------------------------------------------------------------------------------


def test_a_cached_view_of_an_app_without_the_extension_says_so() -> None:
    tc = TieredCache()
    app = Flask("bare")

    @app.route("/x")
    @tc.cached()
    def x() -> str:
        return "x"

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="init_app"):
        app.test_client().get("/x")


def test_l1_off_still_caches_in_redis(make_app: AppFactory) -> None:
    app, calls = counting_app(make_app, {"TIERED_CACHE_L1_MAX_ITEMS": 0})
    client: FlaskClient = app.test_client()
    client.get("/page")
    assert (xcache(client.get("/page")), calls["page"]) == ("HIT-L2", 1)


def test_flask_session_refreshing_its_cookie_makes_pages_unstorable(make_app: AppFactory) -> None:
    app, calls = session_app(make_app, flask_session=True)  # its defaults: refresh each time
    alice = app.test_client()
    alice.get("/login/alice")
    for _ in range(2):
        answer = alice.get("/static-page")
        assert (xcache(answer), "Set-Cookie" in answer.headers) == ("MISS", True)
    assert calls["static"] == 2


def test_a_list_body_is_stored_with_its_length(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/parts")
    @tc.cached(public=True)
    def parts() -> Response:
        return Response([b"abc", b"def"])

    client = app.test_client()
    client.get("/parts")
    hit = client.get("/parts")  # the fast path sends the stored headers as they are
    assert (hit.data, hit.headers["Content-Length"], xcache(hit)) == (b"abcdef", "6", "HIT-L1")


def test_the_page_memo_is_bounded_in_size_not_only_in_entries() -> None:
    """Decoded pages are kept by their text, which L1 may already have dropped: a few
    hundred big reports must not hold gigabytes beside an L1 of 64 MB."""
    decoder = PageDecoder(max_items=1000, max_bytes=200_000)

    def text(number: int, size: int) -> str:
        return encode_page(
            status="200 OK",
            headers=[("Content-Type", "text/plain")],
            body=b"x" * size,
            etag=None,
            stored=float(number),
            vary=(),
            digest="",
            public=True,
        )

    texts = [text(number, 10_000) for number in range(50)]
    for one in texts:
        assert isinstance(decoder.get(one), Page)
    assert decoder.bytes <= 200_000
    assert decoder.known(texts[-1]) is not None  # the newest are kept
    assert decoder.known(texts[0]) is None  # the oldest went
    huge = text(99, 250_000)  # bigger than the whole budget: decoded, not kept
    assert isinstance(decoder.get(huge), Page)
    assert decoder.known(huge) is None and decoder.known(texts[-1]) is not None


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
@pytest.mark.parametrize("vary", [(), ("Accept-Language",)], ids=["plain", "vary"])
def test_a_request_counts_once_by_what_answered_it(
    make_app: AppFactory, public: bool, vary: tuple[str, ...]
) -> None:
    """``l1_hits``, ``l2_hits`` and ``misses`` count requests by what answered them: a
    page behind a ``Vary`` index reads twice, and counted both, a MISS was an L1 hit."""
    apps = [make_app(), make_app()]
    for app, tc in apps:

        @app.route("/page")
        @tc.cached(public=public, vary=vary)
        def page() -> str:
            return "hello " + request.headers.get("Accept-Language", "")

    def counted(app: Flask, language: str) -> tuple[str | None, dict[str, int]]:
        cache = TieredCache.state(app).cache
        before = cache.stats()
        answer = app.test_client().get("/page", headers={"Accept-Language": language})
        after = cache.stats()
        names = ("l1_hits", "l2_hits", "misses")
        return xcache(answer), {name: after[name] - before[name] for name in names}

    (first, _), (second, _) = apps
    assert counted(first, "fr") == ("MISS", {"l1_hits": 0, "l2_hits": 0, "misses": 1})
    assert counted(second, "fr") == ("HIT-L2", {"l1_hits": 0, "l2_hits": 1, "misses": 0})
    assert counted(second, "fr") == ("HIT-L1", {"l1_hits": 1, "l2_hits": 0, "misses": 0})
    if vary:
        assert counted(second, "de") == ("MISS", {"l1_hits": 0, "l2_hits": 0, "misses": 1})
