"""``tiered_cache.http``: Cache-Control, ETag, Last-Modified and Vary helpers on Flask views."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask, Response, abort, request
from flask.testing import FlaskClient
from flask.typing import ResponseReturnValue
from werkzeug.http import generate_etag, http_date, quote_etag

from tiered_cache.flask_ext import TieredCache
from tiered_cache.http import cache_control, etag, last_modified, no_store, vary

BODY = "hello"
TAG = generate_etag(BODY.encode())
CHANGED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def calls() -> Counter[str]:
    """How many times each view body ran."""
    return Counter()


# -- cache_control ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directives", "rendered"),
    [
        ({"public": True, "max_age": 60}, "public, max-age=60"),
        ({"max_age": 0, "must_revalidate": True}, "max-age=0, must-revalidate"),
        ({"private": True, "no_cache": True}, "private, no-cache"),
        ({"private": "Set-Cookie"}, "private=Set-Cookie"),
        ({"no_cache": "Set-Cookie, Authorization"}, 'no-cache="Set-Cookie, Authorization"'),
        (
            {"public": True, "s_maxage": 600, "stale_while_revalidate": 30, "stale_if_error": 90},
            "public, s-maxage=600, stale-while-revalidate=30, stale-if-error=90",
        ),
        ({"max_age": 31536000, "immutable": True}, "max-age=31536000, immutable"),
        (
            {"no_store": True, "no_transform": True, "proxy_revalidate": True},
            "no-store, no-transform, proxy-revalidate",
        ),
        ({"must_understand": True, "no_store": True}, "must-understand, no-store"),
        ({"public": False, "max_age": None, "immutable": True}, "immutable"),
    ],
)
def test_directives_render_exactly(
    app: Flask, client: FlaskClient, directives: dict[str, object], rendered: str
) -> None:
    @app.get("/")
    @cache_control(**directives)  # type: ignore[arg-type]
    def view() -> str:
        return BODY

    response = client.get("/")
    assert response.headers.getlist("Cache-Control") == [rendered]
    assert response.text == BODY


@pytest.mark.parametrize(
    "returned",
    [
        lambda: BODY,
        lambda: (BODY, 201),
        lambda: (BODY, 201, {"X-Mine": "1"}),
        lambda: (BODY, {"X-Mine": "1"}),
        lambda: {"greeting": BODY},
        lambda: Response(BODY, status=201, headers={"X-Mine": "1"}),
        lambda: [BODY],
    ],
    ids=["str", "tuple2-status", "tuple3", "tuple2-headers", "dict", "Response", "list"],
)
def test_every_return_type_gets_the_headers(
    app: Flask, client: FlaskClient, returned: Callable[[], ResponseReturnValue]
) -> None:
    @app.get("/")
    @cache_control(max_age=5)
    @vary("Accept-Language")
    @etag
    def view() -> ResponseReturnValue:
        return returned()

    plain = Flask("plain")
    plain.get("/")(returned)
    expected = plain.test_client().get("/")

    response = client.get("/")
    assert response.status_code == expected.status_code
    assert response.data == expected.data
    assert response.headers.get("X-Mine") == expected.headers.get("X-Mine")
    assert response.headers["Cache-Control"] == "max-age=5"
    assert response.headers["Vary"] == "Accept-Language"
    assert response.headers["ETag"] == quote_etag(generate_etag(expected.data))


def test_unknown_directive_is_a_type_error_at_decoration_time() -> None:
    with pytest.raises(TypeError, match="'max_ages'"):
        cache_control(max_age=1, max_ages=60)
    with pytest.raises(TypeError, match="'no-store'"):
        cache_control(**{"no-store": True})


@pytest.mark.parametrize(
    ("directives", "error"),
    [
        ({"max_age": "60"}, TypeError),
        ({"max_age": 1.5}, TypeError),
        ({"max_age": True}, TypeError),
        ({"s_maxage": -1}, ValueError),
        ({"public": "yes"}, TypeError),
        ({"immutable": 1}, TypeError),
        ({"private": ""}, TypeError),
        ({"public": True, "private": True}, ValueError),
        ({"public": True, "no_store": True}, ValueError),
    ],
)
def test_bad_values_fail_at_decoration_time(
    directives: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match="cache_control"):
        cache_control(**directives)  # type: ignore[arg-type]


def test_the_views_own_directives_win_and_restrictive_beats_public(
    app: Flask, client: FlaskClient
) -> None:
    @app.get("/own")
    @cache_control(public=True, max_age=60, immutable=True)
    def own() -> Response:
        response = Response(BODY)
        response.cache_control.max_age = 5
        return response

    @app.get("/personal")
    @cache_control(public=True, max_age=60)
    def personal() -> Response:
        response = Response(BODY)
        response.cache_control.private = True
        return response

    assert client.get("/own").headers["Cache-Control"] == "max-age=5, public, immutable"
    assert client.get("/personal").headers["Cache-Control"] == "private, max-age=60"


def test_cache_control_reads_every_line_in_any_case(app: Flask, client: FlaskClient) -> None:
    @app.get("/capitals")
    @cache_control(public=True, max_age=60)
    def capitals() -> Response:
        return Response(BODY, headers={"Cache-Control": "Private"})

    @app.get("/two-lines")
    @cache_control(public=True, max_age=60)
    def two_lines() -> Response:
        return Response(
            BODY, headers=[("Cache-Control", "max-age=5"), ("Cache-Control", "No-Store")]
        )

    assert client.get("/capitals").headers.getlist("Cache-Control") == ["private, max-age=60"]
    assert client.get("/two-lines").headers.getlist("Cache-Control") == ["max-age=5, no-store"]


def test_a_directive_given_twice_keeps_its_stricter_reading(
    app: Flask, client: FlaskClient
) -> None:
    """A bare ``private`` (or ``no-cache``) covers the whole response, one that names
    fields those fields alone (RFC 9111 5.2.2.4, 5.2.2.7): folding the lines kept the
    last, and ``private`` became ``private="Set-Cookie"``, a personal page a shared
    cache may store; of two ages the last won too (0 became 3600)."""
    lines = {
        "/private": ['private="Set-Cookie"', "private"],
        "/no-cache": ["no-cache", 'no-cache="Set-Cookie"'],
        "/fields": ['private="Set-Cookie"', 'private="X-Token"'],
        "/ages": ["max-age=0", "max-age=3600"],
        "/bad-age": ["max-age", "max-age=3600"],  # malformed: read as 0, never as fresh
        "/fields-cased": ['private="X-Token"', 'private="x-token, Set-Cookie"'],
    }

    def answer(headers: list[str]) -> Callable[[], Response]:
        return lambda: Response(BODY, headers=[("Cache-Control", line) for line in headers])

    for path, headers in lines.items():
        app.add_url_rule(path, path, cache_control(max_age=60)(answer(headers)))

    @app.get("/statement")
    @cache_control(private=True, max_age=60)
    @cache_control(private="Set-Cookie")
    def statement() -> str:
        return BODY

    def sent(path: str) -> list[str]:
        return client.get(path).headers.getlist("Cache-Control")

    assert sent("/private") == ["private, max-age=60"]
    assert sent("/no-cache") == ["no-cache, max-age=60"]
    assert sent("/fields") == ['private="Set-Cookie, X-Token", max-age=60']
    assert sent("/ages") == ["max-age=0"]
    assert sent("/bad-age") == ["max-age=0"]
    assert sent("/fields-cased") == ['private="X-Token, Set-Cookie", max-age=60']
    assert sent("/statement") == ["private, max-age=60"]


def test_no_store_bare_and_called_and_it_drops_public(app: Flask, client: FlaskClient) -> None:
    @app.get("/bare")
    @no_store
    def bare() -> tuple[str, int]:
        return BODY, 200

    @app.get("/called")
    @no_store()
    def called() -> dict[str, str]:
        return {"a": "b"}

    @app.get("/public")
    @no_store
    @cache_control(public=True, max_age=60)
    def public() -> str:
        return BODY

    assert client.get("/bare").headers["Cache-Control"] == "no-store, private"
    assert client.get("/called").headers["Cache-Control"] == "no-store, private"
    assert client.get("/public").headers["Cache-Control"] == "max-age=60, no-store, private"


def test_errors_from_abort_pass_through_untouched(app: Flask, client: FlaskClient) -> None:
    @app.get("/")
    @cache_control(public=True, max_age=60)
    @etag
    def view() -> str:
        abort(404)

    response = client.get("/")
    assert response.status_code == 404
    assert "Cache-Control" not in response.headers
    assert "ETag" not in response.headers


# -- vary -----------------------------------------------------------------------------------


def test_vary_merges_without_duplicates(app: Flask, client: FlaskClient) -> None:
    @app.get("/")
    @vary("Accept-Language", "cookie")
    @vary("Accept-Encoding", "Accept-Language")
    def view() -> tuple[str, dict[str, str]]:
        return BODY, {"Vary": "Cookie, Origin"}

    assert client.get("/").headers.getlist("Vary") == [
        "Cookie, Origin, Accept-Encoding, Accept-Language"
    ]


def test_vary_keeps_every_line(app: Flask, client: FlaskClient) -> None:
    @app.get("/")
    @vary("Accept-Language")
    def view() -> Response:
        return Response(BODY, headers=[("Vary", "Cookie"), ("Vary", "Origin")])

    assert client.get("/").headers.getlist("Vary") == ["Cookie, Origin, Accept-Language"]


@pytest.mark.parametrize("names", [(), ("Accept, Cookie",), ("",), ("Accept Language",)])
def test_vary_refuses_what_is_not_a_header_name(names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="vary"):
        vary(*names)


# -- etag: reads ----------------------------------------------------------------------------


@pytest.fixture
def tagged(app: Flask, calls: Counter[str]) -> Flask:
    """``/doc`` under ``@etag``, counting its runs."""

    @app.route("/doc", methods=["GET"])
    @etag
    def doc() -> str:
        calls["doc"] += 1
        return BODY

    return app


def test_etag_is_strong_and_from_the_body(tagged: Flask, client: FlaskClient) -> None:
    response = client.get("/doc")
    assert response.status_code == 200
    assert response.headers["ETag"] == f'"{TAG}"'
    assert response.get_etag() == (TAG, False)


@pytest.mark.parametrize(
    "if_none_match",
    [f'"{TAG}"', f'W/"{TAG}"', f'"other", "{TAG}"', "*"],
    ids=["strong", "weak-form", "in-list", "star"],
)
def test_if_none_match_gets_304_with_weak_comparison(
    tagged: Flask, client: FlaskClient, calls: Counter[str], if_none_match: str
) -> None:
    response = client.get("/doc", headers={"If-None-Match": if_none_match})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == f'"{TAG}"'
    assert calls["doc"] == 1  # the body is the tag: the view runs (see etag(current=...))


def test_if_none_match_mismatch_gets_the_page(tagged: Flask, client: FlaskClient) -> None:
    response = client.get("/doc", headers={"If-None-Match": '"other", W/"nope"'})
    assert (response.status_code, response.text) == (200, BODY)


def test_head_gets_the_etag_and_304(tagged: Flask, client: FlaskClient) -> None:
    head = client.head("/doc")
    assert (head.status_code, head.data, head.headers["ETag"]) == (200, b"", f'"{TAG}"')
    assert client.head("/doc", headers={"If-None-Match": f'"{TAG}"'}).status_code == 304


@pytest.mark.parametrize(
    ("if_match", "status"),
    [(f'"{TAG}"', 200), ("*", 200), ('"other"', 412), (f'W/"{TAG}"', 412)],
    ids=["match", "star", "mismatch", "weak-never-matches"],
)
def test_if_match_on_get_uses_strong_comparison(
    tagged: Flask, client: FlaskClient, if_match: str, status: int
) -> None:
    assert client.get("/doc", headers={"If-Match": if_match}).status_code == status


def test_weak_tags_never_satisfy_if_match(app: Flask, client: FlaskClient) -> None:
    @app.get("/weak")
    @etag(weak=True)
    def weak() -> str:
        return BODY

    assert client.get("/weak").headers["ETag"] == f'W/"{TAG}"'
    assert client.get("/weak", headers={"If-None-Match": f'"{TAG}"'}).status_code == 304
    assert client.get("/weak", headers={"If-Match": f'"{TAG}"'}).status_code == 412
    assert client.get("/weak", headers={"If-Match": "*"}).status_code == 200


def test_the_views_own_etag_is_kept(app: Flask, client: FlaskClient) -> None:
    @app.get("/")
    @etag
    def view() -> tuple[str, dict[str, str]]:
        return BODY, {"ETag": '"v7"'}

    assert client.get("/").headers["ETag"] == '"v7"'
    assert client.get("/", headers={"If-None-Match": '"v7"'}).status_code == 304


def test_streamed_and_non_2xx_responses_are_untouched(app: Flask, client: FlaskClient) -> None:
    def chunks() -> Iterator[str]:
        yield BODY

    @app.get("/stream")
    @etag
    def stream() -> Response:
        return Response(chunks())

    @app.get("/missing")
    @etag
    def missing() -> tuple[str, int]:
        return BODY, 404

    streamed = client.get("/stream", headers={"If-None-Match": "*"})
    assert (streamed.status_code, streamed.text, streamed.headers.get("ETag")) == (200, BODY, None)
    gone = client.get("/missing", headers={"If-None-Match": "*", "If-Match": '"x"'})
    assert (gone.status_code, gone.headers.get("ETag")) == (404, None)


def test_etag_current_answers_304_without_running_the_view(
    app: Flask, client: FlaskClient, calls: Counter[str]
) -> None:
    versions = {1: "v1"}

    def version(item_id: int) -> str | None:
        return versions.get(item_id)

    @app.get("/item/<int:item_id>")
    @etag(current=version)
    def item(item_id: int) -> str:
        calls["item"] += 1
        return f"item {item_id}"

    first = client.get("/item/1")
    assert (first.status_code, first.headers["ETag"]) == (200, '"v1"')
    assert client.get("/item/1", headers={"If-None-Match": '"v1"'}).status_code == 304
    assert client.get("/item/1", headers={"If-Match": '"v0"'}).status_code == 412
    assert calls["item"] == 1
    versions[1] = "v2"
    assert client.get("/item/1", headers={"If-None-Match": '"v1"'}).status_code == 200
    assert calls["item"] == 2


# -- etag: writes ---------------------------------------------------------------------------


@pytest.fixture
def store(app: Flask, calls: Counter[str]) -> dict[str, str]:
    """``/doc/<name>``: GET and PUT in one view under ``@etag``, DELETE in another."""
    docs = {"a": "first"}

    @app.route("/doc/<name>", methods=["GET", "PUT"])
    @etag
    def doc(name: str) -> tuple[str, int]:
        calls[request.method] += 1
        if request.method == "PUT":
            created = name not in docs
            docs[name] = request.get_data(as_text=True)
            return "", 201 if created else 204
        if name not in docs:
            abort(404)
        return docs[name], 200

    @app.delete("/doc/<name>")
    @etag
    def remove(name: str) -> tuple[str, int]:
        calls["DELETE"] += 1
        docs.pop(name, None)
        return "", 204

    return docs


def _tag(text: str) -> str:
    return quote_etag(generate_etag(text.encode()))


def test_put_with_a_stale_if_match_gets_412_and_writes_nothing(
    store: dict[str, str], client: FlaskClient, calls: Counter[str]
) -> None:
    response = client.put("/doc/a", data="second", headers={"If-Match": _tag("older")})
    assert response.status_code == 412
    assert store["a"] == "first"
    assert calls["PUT"] == 0


def test_put_with_the_current_if_match_writes(
    store: dict[str, str], client: FlaskClient, calls: Counter[str]
) -> None:
    seen = client.get("/doc/a").headers["ETag"]
    assert client.put("/doc/a", data="second", headers={"If-Match": seen}).status_code == 204
    assert store["a"] == "second"
    # The tag is stale now: a second writer holding it is refused (no lost update).
    assert client.put("/doc/a", data="third", headers={"If-Match": seen}).status_code == 412
    assert store["a"] == "second"
    assert calls["PUT"] == 1


def test_write_preconditions_against_a_missing_resource(
    store: dict[str, str], client: FlaskClient, calls: Counter[str]
) -> None:
    assert client.put("/doc/b", data="x", headers={"If-Match": "*"}).status_code == 412
    assert "b" not in store
    assert client.put("/doc/b", data="x", headers={"If-None-Match": "*"}).status_code == 201
    assert client.put("/doc/b", data="y", headers={"If-None-Match": "*"}).status_code == 412
    assert store["b"] == "x"
    assert calls["PUT"] == 1


def test_if_match_star_and_if_none_match_tags_on_writes(
    store: dict[str, str], client: FlaskClient
) -> None:
    assert client.put("/doc/a", data="2", headers={"If-Match": "*"}).status_code == 204
    assert client.put("/doc/a", data="3", headers={"If-None-Match": _tag("2")}).status_code == 412
    assert client.put("/doc/a", data="3", headers={"If-None-Match": _tag("1")}).status_code == 204
    assert store["a"] == "3"


def test_a_write_checks_the_get_of_another_view_for_the_same_url(
    store: dict[str, str], client: FlaskClient, calls: Counter[str]
) -> None:
    assert client.delete("/doc/a", headers={"If-Match": _tag("nope")}).status_code == 412
    assert client.delete("/doc/a", headers={"If-Match": _tag("first")}).status_code == 204
    assert "a" not in store
    assert calls["DELETE"] == 1


def test_a_resource_whose_get_streams_exists_but_has_no_tag_to_match(
    app: Flask, client: FlaskClient, calls: Counter[str]
) -> None:
    """``If-Match: *`` holds for it (RFC 9110 13.1.1: a current representation exists),
    and ``If-None-Match: *`` fails; a list of tags never matches. Every write got 412."""

    @app.route("/feed", methods=["GET", "PUT"])
    @etag
    def feed() -> Response:
        if request.method == "PUT":
            calls["PUT"] += 1
            return Response(status=204)
        return Response(iter([b"a", b"b"]))

    assert client.put("/feed", headers={"If-Match": "*"}).status_code == 204
    assert client.put("/feed", headers={"If-Match": '"ab"'}).status_code == 412
    assert client.put("/feed", headers={"If-None-Match": "*"}).status_code == 412
    assert client.put("/feed", headers={"If-None-Match": '"ab"'}).status_code == 204
    assert calls == Counter({"PUT": 2})


def test_unconditional_writes_run_no_get_and_get_no_etag(
    store: dict[str, str], client: FlaskClient, calls: Counter[str]
) -> None:
    response = client.put("/doc/a", data="second")
    assert (response.status_code, response.headers.get("ETag")) == (204, None)
    assert calls == Counter({"PUT": 1})


def test_write_preconditions_with_current_skip_the_get(
    app: Flask, client: FlaskClient, calls: Counter[str]
) -> None:
    versions = {"a": "3"}

    def version(name: str) -> str | None:
        return versions.get(name)

    @app.route("/v/<name>", methods=["GET", "PUT"])
    @etag(current=version)
    def doc(name: str) -> str:
        calls[request.method] += 1
        versions[name] = str(int(versions.get(name, "0")) + 1)
        return ""

    assert client.put("/v/a", headers={"If-Match": '"2"'}).status_code == 412
    assert client.put("/v/a", headers={"If-Match": '"3"'}).status_code == 200
    assert client.put("/v/b", headers={"If-Match": "*"}).status_code == 412
    assert calls == Counter({"PUT": 1})


# -- last_modified --------------------------------------------------------------------------


@pytest.fixture
def dated(app: Flask, calls: Counter[str]) -> dict[str, datetime | None]:
    """``/page`` (GET, PUT) under ``@last_modified``; the dict holds its date."""
    state: dict[str, datetime | None] = {"changed": CHANGED}

    @app.route("/page", methods=["GET", "PUT"])
    @last_modified(lambda: state["changed"])
    def page() -> str:
        calls[request.method] += 1
        return BODY

    return state


def test_last_modified_is_set(dated: dict[str, datetime | None], client: FlaskClient) -> None:
    response = client.get("/page")
    assert response.headers["Last-Modified"] == http_date(CHANGED)
    assert response.last_modified == CHANGED


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(seconds=1), timedelta(days=3)])
def test_if_modified_since_gets_304_without_running_the_view(
    dated: dict[str, datetime | None],
    client: FlaskClient,
    calls: Counter[str],
    delta: timedelta,
) -> None:
    for method in (client.get, client.head):
        response = method("/page", headers={"If-Modified-Since": http_date(CHANGED + delta)})
        assert (response.status_code, response.data) == (304, b"")
    assert calls["GET"] == 0


def test_if_modified_since_earlier_runs_the_view(
    dated: dict[str, datetime | None], client: FlaskClient, calls: Counter[str]
) -> None:
    earlier = http_date(CHANGED - timedelta(seconds=1))
    response = client.get("/page", headers={"If-Modified-Since": earlier})
    assert (response.status_code, response.text, calls["GET"]) == (200, BODY, 1)


def test_if_none_match_takes_precedence_over_if_modified_since(
    dated: dict[str, datetime | None], client: FlaskClient, calls: Counter[str]
) -> None:
    headers = {"If-Modified-Since": http_date(CHANGED), "If-None-Match": '"other"'}
    assert client.get("/page", headers=headers).status_code == 200
    assert calls["GET"] == 1


@pytest.mark.parametrize("order", ["etag below", "etag above"])
def test_a_failing_if_match_is_answered_before_if_modified_since(
    app: Flask, client: FlaskClient, calls: Counter[str], order: str
) -> None:
    """RFC 9110 13.2.2 weighs If-Match first: a date that says "not modified" must not
    answer 304 for a request whose If-Match fails (the docstring's stacking too)."""

    def view() -> str:
        calls["GET"] += 1
        return BODY

    dated = last_modified(lambda: CHANGED)
    wrapped = dated(etag(view)) if order == "etag below" else etag(dated(view))
    app.add_url_rule("/both", "both", wrapped)
    since = http_date(CHANGED)
    failing = client.get("/both", headers={"If-Match": '"nomatch"', "If-Modified-Since": since})
    assert failing.status_code == 412
    holding = client.get("/both", headers={"If-Match": "*", "If-Modified-Since": since})
    # Above, etag weighs the date after If-Match (werkzeug's make_conditional, with the
    # Last-Modified set below); below it, last_modified lets the view run and does not.
    assert holding.status_code == (200 if order == "etag below" else 304)
    assert client.get("/both", headers={"If-Modified-Since": since}).status_code == 304


def test_if_unmodified_since_on_put(
    dated: dict[str, datetime | None], client: FlaskClient, calls: Counter[str]
) -> None:
    before = http_date(CHANGED - timedelta(seconds=1))
    assert client.put("/page", headers={"If-Unmodified-Since": before}).status_code == 412
    assert calls["PUT"] == 0
    # If-Match, when present, decides instead (RFC 9110 13.2.2).
    assert (
        client.put("/page", headers={"If-Unmodified-Since": before, "If-Match": "*"}).status_code
        == 200
    )
    assert (
        client.put("/page", headers={"If-Unmodified-Since": http_date(CHANGED)}).status_code == 200
    )
    assert calls["PUT"] == 2
    assert "Last-Modified" not in client.put("/page").headers


def test_a_writes_if_match_without_an_etag_decorator_is_answered_before_the_view(
    dated: dict[str, datetime | None], client: FlaskClient, calls: Counter[str]
) -> None:
    """Alone, last_modified let any If-Match through to the view unweighed, and skipped
    If-Unmodified-Since for it: a stale client's PUT overwrote a newer version. It is
    weighed against the tag of what a GET answers now (here, none: no list matches)."""
    stale = {"If-Unmodified-Since": http_date(CHANGED - timedelta(seconds=1))}
    assert client.put("/page", headers={**stale, "If-Match": '"bogus"'}).status_code == 412
    assert calls == Counter({"GET": 1})  # the GET that had no tag to match
    assert client.put("/page", headers={**stale, "If-Match": "*"}).status_code == 200
    assert client.get("/page", headers={"If-Match": '"bogus"'}).status_code == 200  # no tag
    assert calls == Counter({"GET": 3, "PUT": 1})  # "*" asked a GET whether it exists


def test_last_modified_weighs_a_writes_tags_whatever_it_knows_of_the_date(
    app: Flask, client: FlaskClient, calls: Counter[str]
) -> None:
    """A create-only PUT (If-None-Match: *) overwrote what existed, and with no date
    known (``fn`` gave None) a stale If-Match, or If-Match: * on nothing, went through
    (RFC 9110 13.1.1, 13.1.2): the write's tags are weighed before ``fn`` is asked."""
    docs: dict[str, str] = {"a": "v1"}
    dates: dict[str, datetime | None] = {"a": CHANGED}

    @app.route("/doc/<name>", methods=["GET", "PUT"])
    @last_modified(lambda name: dates.get(name))  # noqa: PLW0108 - Flask passes name=
    def doc(name: str) -> ResponseReturnValue:
        calls[request.method] += 1
        if request.method == "PUT":
            docs[name] = request.get_data(as_text=True)
            return "", 204
        return docs.get(name, ("", 404))

    @app.route("/drop/<name>", methods=["DELETE"])
    @last_modified(lambda name: None)
    def drop(name: str) -> ResponseReturnValue:
        calls["DELETE"] += 1
        return "", 204

    def put(name: str, **headers: str) -> int:
        return client.put(f"/doc/{name}", data="new", headers=headers).status_code

    assert put("a", **{"If-None-Match": "*"}) == 412  # it exists: not created over
    dates["a"] = None  # a date this app does not track
    assert put("a", **{"If-Match": '"stale"'}) == 412
    assert put("b", **{"If-Match": "*"}) == 412  # nothing there to match
    assert (calls["PUT"], docs) == (0, {"a": "v1"})
    assert put("b", **{"If-None-Match": "*"}) == 204  # create-only, and nothing there
    assert "ETag" not in client.get("/doc/a").headers  # alone it sets none: "*" it is
    assert put("a", **{"If-Match": "*"}) == 204
    assert (calls["PUT"], docs) == (2, {"a": "new", "b": "new"})

    # A URL that answers no GET has nothing to weigh them against: the view decides.
    for condition in ({"If-Match": "*"}, {"If-None-Match": "*"}, {"If-Match": '"x"'}):
        assert client.delete("/drop/a", headers=condition).status_code == 204
    assert calls["DELETE"] == 3


def test_a_writes_if_match_meets_the_tag_a_cached_page_carries(
    app: Flask, redis_url: str, calls: Counter[str]
) -> None:
    """Under ``@tc.cached``, whose pages carry a strong ETag (as README says to stack
    the helpers), a PUT naming the tag the GET gave must pass, and a GET with it too."""
    from tiered_cache.flask_ext import TieredCache

    app.config["TIERED_CACHE_REDIS_URL"] = redis_url
    tc = TieredCache(app, prefix="lm-cached")

    @app.route("/doc", methods=["GET", "PUT"])
    @tc.cached(timeout=60)
    @last_modified(lambda: CHANGED)
    def doc() -> str:
        calls[request.method] += 1
        return BODY

    try:
        client = app.test_client()
        tag = client.get("/doc").headers["ETag"]
        assert client.get("/doc", headers={"If-Match": tag}).status_code == 200  # a hit
        with app.app_context():
            tc.clear()
        assert client.get("/doc", headers={"If-Match": tag}).status_code == 200  # a miss
        assert client.put("/doc", headers={"If-Match": tag}).status_code == 200
        assert client.put("/doc", headers={"If-Match": '"other"'}).status_code == 412
        assert calls["PUT"] == 1
    finally:
        TieredCache.state(app).cache.close()


def test_unknown_date_just_runs_the_view(
    dated: dict[str, datetime | None], client: FlaskClient, calls: Counter[str]
) -> None:
    dated["changed"] = None
    response = client.get("/page", headers={"If-Modified-Since": http_date(CHANGED)})
    assert (response.status_code, response.headers.get("Last-Modified")) == (200, None)
    assert calls["GET"] == 1


def test_naive_and_sub_second_dates_compare_as_http_does(
    dated: dict[str, datetime | None], client: FlaskClient, calls: Counter[str]
) -> None:
    dated["changed"] = CHANGED.replace(tzinfo=None, microsecond=999_999)
    assert client.get("/page").headers["Last-Modified"] == http_date(CHANGED)
    response = client.get("/page", headers={"If-Modified-Since": http_date(CHANGED)})
    assert response.status_code == 304
    assert calls["GET"] == 1


def test_last_modified_receives_the_view_arguments(
    app: Flask, client: FlaskClient, calls: Counter[str]
) -> None:
    changed = {1: CHANGED, 2: CHANGED + timedelta(days=1)}

    @app.get("/post/<int:post_id>")
    @last_modified(lambda post_id: changed[post_id])
    def post(post_id: int) -> str:
        calls["post"] += 1
        return f"post {post_id}"

    since = {"If-Modified-Since": http_date(CHANGED)}
    assert client.get("/post/1", headers=since).status_code == 304
    assert client.get("/post/2", headers=since).status_code == 200
    assert calls["post"] == 1


# -- stacking -------------------------------------------------------------------------------


@pytest.mark.parametrize("etag_first", [True, False])
def test_stacked_helpers_and_early_304s_carry_the_headers(
    app: Flask, client: FlaskClient, calls: Counter[str], etag_first: bool
) -> None:
    def view() -> str:
        calls["view"] += 1
        return BODY

    validators = [etag, last_modified(lambda: CHANGED)]
    for decorator in validators if etag_first else validators[::-1]:
        view = decorator(view)  # type: ignore[assignment]
    view = vary("Accept-Language")(view)  # type: ignore[assignment]
    app.get("/")(cache_control(public=True, max_age=60)(view))

    full = client.get("/")
    assert full.headers["ETag"] == f'"{TAG}"'
    assert full.headers["Last-Modified"] == http_date(CHANGED)
    for headers in ({"If-Modified-Since": http_date(CHANGED)}, {"If-None-Match": f'"{TAG}"'}):
        response = client.get("/", headers=headers)
        assert response.status_code == 304
        assert response.headers["Cache-Control"] == "public, max-age=60"
        assert response.headers["Vary"] == "Accept-Language"
    # The date answered before the view; the ETag needed its body.
    assert calls["view"] == 2


def test_decorators_keep_the_view_name_and_docs(app: Flask) -> None:
    @cache_control(max_age=1)
    @no_store
    @vary("Cookie")
    @last_modified(lambda: CHANGED)
    @etag
    def my_view() -> str:
        """Doc."""
        return BODY

    assert (my_view.__name__, my_view.__doc__) == ("my_view", "Doc.")


def test_async_views(app: Flask, client: FlaskClient) -> None:
    pytest.importorskip("asgiref")

    @app.get("/")
    @cache_control(max_age=1)
    @etag
    async def view() -> str:
        return BODY

    assert client.get("/", headers={"If-None-Match": f'"{TAG}"'}).status_code == 304


# -- with @tc.cached ----------------------------------------------------------------------


@pytest.fixture
def cached_app(redis_url: str) -> Iterator[tuple[Flask, TieredCache]]:
    """An app with the extension on the shared test Redis; its cache closed after."""
    app = Flask(__name__)
    app.config.update(TESTING=True, TIERED_CACHE_REDIS_URL=redis_url)
    tc = TieredCache(app)
    yield app, tc
    TieredCache.state(app).cache.close()


def test_helpers_below_tc_cached_are_stored_with_the_page(
    cached_app: tuple[Flask, TieredCache], calls: Counter[str]
) -> None:
    app, tc = cached_app

    @app.get("/")
    @tc.cached(60)
    @cache_control(public=True, max_age=60)
    @vary("Accept-Language")
    @etag
    def page() -> str:
        calls["page"] += 1
        return f"lang {request.headers.get('Accept-Language')}"

    client = app.test_client()
    english = {"Accept-Language": "en"}
    first = client.get("/", headers=english)
    hit = client.get("/", headers=english)
    assert calls["page"] == 1
    for response in (first, hit):
        assert response.text == "lang en"
        assert response.headers["Cache-Control"] == "public, max-age=60"
        assert response.headers["Vary"] == "Accept-Language"
        assert response.headers["ETag"] == quote_etag(generate_etag(b"lang en"))
    assert hit.headers["X-Cache"].startswith("HIT")
    assert client.get("/", headers={"Accept-Language": "fr"}).text == "lang fr"
    assert calls["page"] == 2
    not_modified = client.get("/", headers={**english, "If-None-Match": first.headers["ETag"]})
    assert not_modified.status_code == 304
    assert calls["page"] == 2


def test_no_store_below_tc_cached_is_never_stored(
    cached_app: tuple[Flask, TieredCache], calls: Counter[str]
) -> None:
    app, tc = cached_app

    @app.get("/")
    @tc.cached(60)
    @no_store
    def page() -> str:
        calls["page"] += 1
        return BODY

    client = app.test_client()
    for _ in range(3):
        assert client.get("/").headers["Cache-Control"] == "no-store, private"
    assert calls["page"] == 3
