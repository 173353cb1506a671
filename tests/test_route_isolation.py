"""Pages never cross to a request they were not made for: not to another host or scheme,
not from a path that decodes to look like another URL, not to a server-side session that
changed under the same cookie; and header lines or statuses never make a page say more
than it should."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, Response, request, session, url_for

from tests import test_routes
from tests.session_apps import logged_in
from tests.test_routes import SESSION_KINDS, AppFactory, session_app, xcache
from tiered_cache import MISS, TieredCache
from tiered_cache.keyspace import OwnSpace

make_app = test_routes.make_app  # the app factory fixture, shared

# -- the URL: host, scheme, and paths that decode to something else ---------------------------


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_page_is_never_served_to_another_host_or_scheme(
    make_app: AppFactory, public: bool
) -> None:
    """A page that shows its own URL (``url_for(_external=True)``) must not be served to a
    request that sent another ``Host``: that is how a forged Host poisons a shared cache.
    An empty ``Host`` is one too: it was keyed by SERVER_NAME:SERVER_PORT, the name
    other requests send, and its page (links to ``http:///...``) reached them."""
    app, tc = make_app()

    @app.route("/home")
    @tc.cached(public=public)
    def home() -> str:
        return url_for("home", _external=True)

    client = app.test_client()
    origins = ["http://shop.example", "http://evil.example", "https://shop.example"]
    for origin in origins:
        assert client.get("/home", base_url=origin).text == f"{origin}/home"
    for origin in origins:
        again = client.get("/home", base_url=origin)
        assert (again.text, xcache(again)) == (f"{origin}/home", "HIT-L1")
    empty = {"HTTP_HOST": "", "SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    assert client.get("/home", environ_overrides=empty).text == "http:///home"
    named = client.get("/home", environ_overrides={"HTTP_HOST": "localhost:80"})
    assert (named.text, xcache(named)) == ("http://localhost/home", "MISS")


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_path_that_decodes_to_a_query_or_a_variant_is_keyed_apart(
    make_app: AppFactory, public: bool
) -> None:
    """``%3F`` decodes to ``?`` and ``%00`` to NUL in ``PATH_INFO``: a request for
    ``/search/foo%3Fpage=2`` must not store its page where ``/search/foo?page=2`` reads."""
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/search/<path:q>")
    @tc.cached(public=public)
    def search(q: str) -> str:
        calls[q] += 1
        return f"q={q!r} page={request.args.get('page')}"

    client = app.test_client()
    poisoned = client.get("/search/foo%3Fpage=2")
    assert poisoned.text == "q='foo?page=2' page=None"
    honest = client.get("/search/foo?page=2")
    assert (honest.text, xcache(honest)) == ("q='foo' page=2", "MISS")
    client.get("/search/a%00v=0")
    assert xcache(client.get("/search/a")) == "MISS"
    # Each stored page is still found by its own request.
    for path in ("/search/foo%3Fpage=2", "/search/foo?page=2", "/search/a%00v=0", "/search/a"):
        assert xcache(client.get(path)) == "HIT-L1"
    assert sum(calls.values()) == 4


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_raw_query_bytes_and_a_query_spelling_their_utf8_are_keyed_apart(
    make_app: AppFactory, public: bool
) -> None:
    """A server hands the raw bytes of ``?q=é`` over as the WSGI string ``q=\xc3\xa9``;
    encoded as the UTF-8 of those characters it read ``q=%C3%83%C2%A9``, a query that
    means ``Ã©`` and that anyone can send. Keyed as its bytes, it is ``q=%C3%A9``: the
    same query as the percent-encoded ``é``, which werkzeug decodes alike."""
    app, tc = make_app()

    @app.route("/p")
    @tc.cached(public=public)
    def p() -> str:
        return f"q={request.args.get('q')!r}"

    client = app.test_client()
    raw = client.get("/p", environ_overrides={"QUERY_STRING": "q=\xc3\xa9"})
    assert raw.text == "q='é'"
    other = client.get("/p?q=%C3%83%C2%A9")
    assert (other.text, xcache(other)) == ("q='Ã©'", "MISS")
    same = client.get("/p?q=%C3%A9")
    assert (same.text, xcache(same)) == ("q='é'", "HIT-L1")


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_the_order_of_one_names_values_is_part_of_the_key(
    make_app: AppFactory, public: bool
) -> None:
    app, tc = make_app()

    @app.route("/p")
    @tc.cached(public=public)
    def p() -> str:
        return f"a={request.args.getlist('a')} b={request.args.get('b')}"

    client = app.test_client()
    assert client.get("/p?a=2&a=1&b=0").text == "a=['2', '1'] b=0"
    swapped = client.get("/p?a=1&a=2&b=0")
    assert (swapped.text, xcache(swapped)) == ("a=['1', '2'] b=0", "MISS")
    moved = client.get("/p?b=0&a=2&a=1")  # other names may move: the same page
    assert (moved.text, xcache(moved)) == ("a=['2', '1'] b=0", "HIT-L1")


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("%61=evil&a=good", "a=good&%61=evil"),  # one name, spelt two ways
        ("a+b=evil&a%20b=good", "a%20b=good&a+b=evil"),  # "+" and "%20" are both a space
        ("%FF=evil&%25FF=good", "%25FF=good&%FF=evil"),  # werkzeug reads both as "%FF"
        ("\xc3\xa9=evil&%C3%A9=good", "%C3%A9=good&\xc3\xa9=evil"),  # raw bytes and their %XX
    ],
    ids=["percent", "plus", "invalid-utf8", "raw-bytes"],
)
def test_one_names_values_keep_their_order_however_the_name_is_spelt(
    make_app: AppFactory, public: bool, first: str, second: str
) -> None:
    """The sort that puts ``?b=1&a=1`` with ``?a=1&b=1`` goes by the name werkzeug reads:
    by the raw name, these two queries sorted alike while ``request.args`` read their
    values in opposite orders, so the first one's page was served for the second."""
    app, tc = make_app()

    @app.route("/p")
    @tc.cached(public=public)
    def p() -> str:
        return f"first value: {next(iter(request.args.values()))}"

    client = app.test_client()
    poisoned = client.get("/p", environ_overrides={"QUERY_STRING": first})
    assert poisoned.text == "first value: evil"
    honest = client.get("/p", environ_overrides={"QUERY_STRING": second})
    assert (honest.text, xcache(honest)) == ("first value: good", "MISS")
    again = client.get("/p", environ_overrides={"QUERY_STRING": second})
    assert (again.text, xcache(again)) == ("first value: good", "HIT-L1")


def test_a_mounted_apps_path_is_not_the_same_url_at_the_root(make_app: AppFactory) -> None:
    """Behind ProxyFix(x_prefix=1), a client that reaches the app with its own
    ``X-Forwarded-Prefix: /a`` asks for the app's ``/b`` at the external URL ``/a/b``:
    keyed by that URL, its page would be served for the app's own ``/a/b``."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    app, tc = make_app()
    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)  # type: ignore[method-assign]

    @app.route("/b")
    @tc.cached()
    def b() -> str:
        return "page of /b"

    @app.route("/a/b")
    @tc.cached()
    def a_b() -> str:
        return "page of /a/b"

    client = app.test_client()
    assert client.get("/b", headers={"X-Forwarded-Prefix": "/a"}).text == "page of /b"
    own = client.get("/a/b")
    assert (own.text, xcache(own)) == ("page of /a/b", "MISS")
    again = client.get("/b", headers={"X-Forwarded-Prefix": "/a"})
    assert (again.text, xcache(again)) == ("page of /b", "HIT-L1")


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_key_prefix_still_keeps_mounts_apart(make_app: AppFactory, public: bool) -> None:
    """``key_prefix`` stands for the path, not for where the app is mounted: behind
    ProxyFix(x_prefix=1) a client's own ``X-Forwarded-Prefix`` would otherwise plant
    links under its prefix in the page everyone else gets."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    app, tc = make_app()

    @app.route("/menu")
    @tc.cached(key_prefix="menu", public=public)
    def menu() -> str:
        return f'<script src="{url_for("static", filename="app.js")}">'

    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)  # type: ignore[method-assign]
    client = app.test_client()
    forged = client.get("/menu", headers={"X-Forwarded-Prefix": "/evil.example"})
    assert forged.text == '<script src="/evil.example/static/app.js">'
    honest = client.get("/menu")
    assert (honest.text, xcache(honest)) == ('<script src="/static/app.js">', "MISS")
    again = client.get("/menu")
    assert (again.text, xcache(again)) == ('<script src="/static/app.js">', "HIT-L1")


def test_a_key_prefix_still_keeps_hosts_apart(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/a")
    @app.route("/b")
    @tc.cached(key_prefix="menu")
    def menu() -> str:
        return f"menu for {request.host}"

    client = app.test_client()
    assert client.get("/a", base_url="http://one.example").text == "menu for one.example"
    shared = client.get("/b", base_url="http://one.example")
    assert (shared.text, xcache(shared)) == ("menu for one.example", "HIT-L1")
    assert client.get("/b", base_url="http://two.example").text == "menu for two.example"


# -- server-side sessions: the cookie stays, the session changes ------------------------------

SERVER_SIDE = [pytest.param({"TIERED_CACHE_SESSIONS": True}, id="tiered-sessions")]
SERVER_SIDE += [kind for kind in SESSION_KINDS if kind.id == "flask-session-redis"]


def server_side_app(make_app: AppFactory, kind: dict[str, Any]) -> tuple[Flask, Counter[str]]:
    """:func:`tests.test_routes.session_app`, with a sign-in that leaves a second key in
    the session and a sign-out that leaves it there (as flask-login's ``logout_user``)."""
    app, calls = session_app(make_app, **kind)

    @app.route("/sign-in/<name>")
    def sign_in(name: str) -> str:
        session["user_id"] = name
        session["csrf"] = "token"
        return "in"

    @app.route("/sign-out")
    def sign_out() -> str:
        session.pop("user_id", None)
        return "out"

    return app, calls


@pytest.mark.parametrize("kind", SERVER_SIDE)
def test_a_page_follows_the_session_not_just_the_cookie(
    make_app: AppFactory, kind: dict[str, Any]
) -> None:
    """Signing out on a shared computer keeps the cookie (other keys stay in the session):
    the next person must not get the page the session read while signed in."""
    app, calls = server_side_app(make_app, kind)
    client = app.test_client()
    client.get("/sign-in/alice")
    cookie = client.get_cookie("session")
    assert cookie is not None
    assert client.get("/me").text == "hello alice"
    assert xcache(client.get("/me")) == "HIT-L1"
    client.get("/sign-out")
    after = client.get_cookie("session")
    assert after is not None and after.value == cookie.value  # the very same cookie
    assert (client.get("/me").text, calls["me"]) == ("hello stranger", 2)
    client.get("/sign-in/bob")
    assert client.get("/me").text == "hello bob"
    client.get("/sign-in/alice")  # the same session contents again: alice's page is shared
    hit = client.get("/me")
    assert (hit.text, xcache(hit), calls["me"]) == ("hello alice", "HIT-L1", 3)


def test_a_revoked_session_s_cookie_gets_no_page_it_read(make_app: AppFactory) -> None:
    """SPEC 5: a revoked session is dead on its next request, cached pages included."""
    app, tc = make_app(TIERED_CACHE_SESSIONS=True)

    @app.post("/login/<user>")
    def login(user: str) -> str:
        tc.sessions.login(user)
        return "in"

    @app.route("/account")
    @tc.cached()
    def account() -> str:
        return f"account of {session.get('user_id', 'nobody')}"

    alice = logged_in(app, "alice")
    assert alice.get("/account").text == "account of alice"
    stolen = alice.get_cookie("session")
    assert stolen is not None
    with app.app_context():
        assert tc.sessions.revoke_user("alice") == 1
    thief = app.test_client()
    thief.set_cookie("session", stolen.value)
    answer = thief.get("/account")
    assert (answer.text, xcache(answer)) == ("account of nobody", "MISS")


@pytest.mark.parametrize("kind", SERVER_SIDE)
def test_a_view_that_changes_the_session_is_never_stored(
    make_app: AppFactory, kind: dict[str, Any]
) -> None:
    app, _ = server_side_app(make_app, kind)
    client = app.test_client()
    answers = [client.get("/visits") for _ in range(3)]
    assert [a.text for a in answers] == ["visit 1", "visit 2", "visit 3"]
    assert {xcache(a) for a in answers} == {"MISS"}


def test_a_session_a_hook_changes_on_every_request_still_caches(make_app: AppFactory) -> None:
    """Only what the view changes makes a page unstorable: a ``before_request`` hook that
    writes the session on every request runs on hits too."""
    app, tc = make_app(TIERED_CACHE_SESSIONS=True)

    @app.before_request
    def mark() -> None:
        session["seen"] = True

    @app.route("/me")
    @tc.cached()
    def me() -> str:
        return f"seen {session.get('seen')}"

    client = app.test_client()
    first = client.get("/me")  # a new session: its cookie is set, the page is not stored
    assert (xcache(first), "Set-Cookie" in first.headers) == ("MISS", True)
    answers = [client.get("/me") for _ in range(2)]
    assert [xcache(a) for a in answers] == ["MISS", "HIT-L1"]
    assert answers[1].text == "seen True"


def test_a_session_page_is_never_served_by_the_fast_path(make_app: AppFactory) -> None:
    """The fast path cannot open a session: a public page that read it goes through Flask,
    where the session's contents are compared."""
    app, tc = make_app(TIERED_CACHE_SESSIONS=True)
    before: Counter[str] = Counter()

    @app.before_request
    def count() -> None:
        before["requests"] += 1

    @app.route("/sign-in/<name>")
    def sign_in(name: str) -> str:
        session["user_id"] = name
        return "in"

    @app.route("/banner")
    @tc.cached(public=True)
    def banner() -> str:
        return f"hi {session.get('user_id', 'guest')}"

    client = app.test_client()
    client.get("/sign-in/alice")
    client.get("/banner")
    hit = client.get("/banner")
    assert (hit.text, xcache(hit), before["requests"]) == ("hi alice", "HIT-L1", 3)


# -- header lines and statuses ----------------------------------------------------------------


ALL_SESSION_KINDS = [*SESSION_KINDS, SERVER_SIDE[0]]


@pytest.mark.parametrize("kind", ALL_SESSION_KINDS)
def test_a_session_read_only_by_an_after_request_hook_keys_the_page_by_cookie(
    make_app: AppFactory, kind: dict[str, Any]
) -> None:
    """Not the view's read (README: such hooks mostly keep books), but the session layer's
    ``Vary: Cookie`` for it keeps users apart: a hook that writes the user into the
    response never hands one user's answer to another, nor to a stranger."""
    app, calls = session_app(make_app, **kind)

    @app.after_request
    def who(response: Response) -> Response:
        response.headers["X-User"] = session.get("user_id", "stranger")
        return response

    alice, bob, stranger = app.test_client(), app.test_client(), app.test_client()
    alice.get("/login/alice")
    bob.get("/login/bob")
    for _ in range(2):
        for client, name in ((alice, "alice"), (bob, "bob"), (stranger, "stranger")):
            answer = client.get("/static-page")
            assert answer.headers["X-User"] == name
            assert "Cookie" in answer.headers.get("Vary", "")
    assert calls["static"] == 3  # each of the three got a page of their own, then a hit


def _tampered(text: str) -> list[str]:
    """``text``, a stored page, with one field each time replaced by what no page of
    ours holds: each must read as a miss, never a 500 nor a header sent as it is."""
    fields = json.loads(text[1:])
    changes: list[dict[int, Any]] = [
        {7: [1]},  # a Vary name that is not a string
        {1: "200 OK\r\nX-Evil: 1"},  # a status line carrying a header
        {1: 200},
        {2: [["X-Evil\r\nSet-Cookie", "a=b"]]},  # a header name that is no token
        {2: [["X-Note", "a\r\nSet-Cookie: a=b"]]},  # a value carrying a header
        {2: [["X-Note"]]},
        {3: 42},
        {3: "no base64 *", 4: True},
        {4: "yes"},
        {5: 5},
        {6: "yesterday"},
        {8: None},
        {9: "yes"},
    ]
    out = []
    for change in changes:
        changed = [change.get(index, field) for index, field in enumerate(fields)]
        out.append(text[0] + json.dumps(changed))
    return [*out, text[0] + "[" * 100_000]


def _page_slot(app: Flask) -> tuple[Callable[[str], Any], Callable[[str, str], bool]]:
    """Read and write a page of the default namespace where the route cache keeps it (no
    user key reaches there), as Redis tampering would."""
    cache = TieredCache.state(app).cache
    pages = OwnSpace(cache)

    def read(key: str) -> Any:
        local, gkey = pages._where(key)
        found = cache._l1_value(local)
        return cache._read(local, gkey) if found is MISS else found

    def write(key: str, text: str) -> bool:
        return cache._store(*pages._where(key), text, None)

    return read, write


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_user_key_that_spells_a_route_key_neither_plants_nor_reads_a_page(
    make_app: AppFactory, public: bool
) -> None:
    """An app that caches under keys its visitors choose (``tc.set(request.args["q"],
    ...)``) must not let one read a page, nor plant one that every visitor is served."""
    app, tc = make_app()

    @app.route("/page")
    @tc.cached(public=public)
    def page() -> str:
        return "honest"

    @app.route("/forged")
    @tc.cached(public=public)
    def forged() -> str:
        return "<script>forged</script>"

    client = app.test_client()
    client.get("/page")
    client.get("/forged")
    forgery = _page_slot(app)[0]("tc.route:http://localhost/forged")
    assert isinstance(forgery, str) and forgery.startswith("E"), forgery
    spelled = "tc.route:http://localhost/page"
    with app.app_context():
        assert tc.get(spelled) is None
        assert tc.set(spelled, forgery)  # what a visitor chose, as key and as value
        assert tc.get(spelled) == forgery
    TieredCache.state(app).cache._l1.clear()  # the page from Redis, as another worker
    for answer in (client.get("/page"), client.get("/page")):
        assert answer.text == "honest", xcache(answer)


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_tampered_page_in_redis_is_a_miss(make_app: AppFactory, public: bool) -> None:
    """SPEC 2: bad bytes in Redis are a miss, never an exception; and a hit sends what
    is stored as it is, so nothing stored may say more than a page would."""
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/page")
    @tc.cached(public=public)
    def page() -> str:
        calls["page"] += 1
        return "page"

    client = app.test_client()
    client.get("/page")
    key = "tc.route:http://localhost/page"
    read, write = _page_slot(app)
    good = read(key)
    assert isinstance(good, str) and good.startswith("E"), good
    for number, bad in enumerate(_tampered(good), start=2):
        write(key, bad)  # in this worker's L1 and in Redis
        answer = client.get("/page")
        assert (answer.status_code, answer.text, xcache(answer)) == (200, "page", "MISS")
        assert "X-Evil" not in answer.headers and "Set-Cookie" not in answer.headers
        assert calls["page"] == number
        assert xcache(client.get("/page")) == "HIT-L1"  # stored anew, and served


def test_a_session_nested_deeper_than_a_digest_can_follow_is_never_a_500(
    make_app: AppFactory,
) -> None:
    """Server-side session data decodes deeper than Flask's tagger can follow: such a
    session has no digest, and matches no page, like one that does not serialize."""
    app, _ = session_app(make_app, TIERED_CACHE_SESSIONS=True)

    @app.route("/nest")
    def nest() -> str:
        value: list[Any] = []
        for _ in range(700):
            value = [value]
        session["deep"] = value
        return "nested"

    client = app.test_client()
    assert client.get("/nest").text == "nested"
    answers = [client.get("/me") for _ in range(2)]
    assert [(a.status_code, xcache(a)) for a in answers] == [(200, "MISS"), (200, "MISS")]


def test_public_given_as_any_truthy_value_still_caches(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/page")
    @tc.cached(public=1)  # type: ignore[arg-type]
    def page() -> str:
        return "page"

    client = app.test_client()
    assert [xcache(client.get("/page")) for _ in range(2)] == ["MISS", "HIT-L1"]


def test_a_page_a_hit_could_not_send_as_it_is_is_not_stored(
    make_app: AppFactory, caplog: Any
) -> None:
    """werkzeug lets a view send a header name that is no token or a control character
    in a value; such a page would read back as tampered (a miss) and be stored again on
    every request: it is not stored, and the log says why."""
    app, tc = make_app()
    calls: Counter[str] = Counter()

    @app.route("/odd/<kind>")
    @tc.cached()
    def odd(kind: str) -> Response:
        calls[kind] += 1
        header = ("X Odd", "1") if kind == "name" else ("X-Odd", "a\x01b")
        return Response("odd", headers=[header])

    client = app.test_client()
    for kind in ("name", "value"):
        answers = [client.get(f"/odd/{kind}") for _ in range(2)]
        assert [(a.text, xcache(a)) for a in answers] == [("odd", "MISS")] * 2
        assert calls[kind] == 2
    assert "not caching /odd/name" in caplog.text


def test_a_second_cache_control_line_is_honoured(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.route("/page")
    @tc.cached(public=True)
    def page() -> Response:
        return Response("mine", headers={"Cache-Control": "public, max-age=60"})

    @app.after_request
    def private(response: Response) -> Response:
        response.headers.add("Cache-Control", "private")
        return response

    client = app.test_client()
    assert [xcache(client.get("/page")) for _ in range(2)] == ["MISS", "MISS"]


def test_every_vary_line_keys_the_page_and_is_kept(make_app: AppFactory) -> None:
    """A hook that adds its ``Vary`` as a second line (as flask-cors does) is honoured."""
    app, tc = make_app()

    @app.route("/page")
    @tc.cached()
    def page() -> Response:
        origin = request.headers.get("Origin", "-")
        return Response(f"for {origin}", headers={"Vary": "Accept-Language"})

    @app.after_request
    def cors(response: Response) -> Response:
        response.headers.add("Vary", "Origin")
        return response

    client = app.test_client()
    a = {"Origin": "https://a.example"}
    b = {"Origin": "https://b.example"}
    assert client.get("/page", headers=a).text == "for https://a.example"
    other = client.get("/page", headers=b)
    assert (other.text, xcache(other)) == ("for https://b.example", "MISS")
    hit = client.get("/page", headers=a)
    assert (hit.text, xcache(hit)) == ("for https://a.example", "HIT-L1")
    assert {v.strip() for v in ",".join(hit.headers.getlist("Vary")).split(",")} == {
        "Accept-Language",
        "Origin",
    }


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_cached_error_page_ignores_if_none_match(make_app: AppFactory, public: bool) -> None:
    """RFC 9110 13.2.1: preconditions are ignored when the response would not be 2xx."""
    app, tc = make_app()

    @app.route("/gone")
    @tc.cached(status_codes=(200, 404), public=public)
    def gone() -> tuple[str, int]:
        return "not here", 404

    client = app.test_client()
    answers = [client.get("/gone", headers={"If-None-Match": "*"}) for _ in range(2)]
    assert [(a.status_code, xcache(a)) for a in answers] == [(404, "MISS"), (404, "HIT-L1")]
    assert answers[1].text == "not here" and "ETag" not in answers[1].headers


@pytest.mark.parametrize("public", [False, True], ids=["through-flask", "fast-path"])
def test_a_cached_204_has_neither_body_nor_content_length(
    make_app: AppFactory, public: bool
) -> None:
    """RFC 9110 6.4.1 and 8.6: a 204 ends at its headers and has no Content-Length."""
    app, tc = make_app()

    @app.route("/empty")
    @tc.cached(public=public, status_codes=(204,))
    def empty() -> Response:
        return Response("dropped", status=204)

    client = app.test_client()
    answers = [client.get("/empty") for _ in range(2)]
    seen = [(a.status_code, xcache(a), a.data, a.headers.get("Content-Length")) for a in answers]
    assert seen == [(204, "MISS", b"", None), (204, "HIT-L1", b"", None)]
