"""Redis sessions (SPEC section 5) through Flask's test client, against real Redis.

Decoding and configuration are in ``test_session_decoding.py``; outages, races, other
processes and the cluster in ``test_session_faults.py``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask, session

from tests.flask_apps import close_app
from tests.redis_harness import RedisServer
from tests.session_apps import (
    AppFactory,
    Clock,
    command_calls,
    cookie_deleted,
    interface,
    logged_in,
    made_apps,
    moved,
    quiet_app,
    set_cookies,
    sid,
)
from tiered_cache import TieredCache
from tiered_cache._session_object import TieredSession
from tiered_cache._session_store import user_tag

LIFETIME = 3600


@pytest.fixture
def make_app(redis_url: str) -> Iterator[AppFactory]:
    """Session apps on the shared Redis; closed after the test."""
    with made_apps(redis_url, PERMANENT_SESSION_LIFETIME=LIFETIME) as make:
        yield make


# -- login, rotate, logout ---------------------------------------------------------------------


def test_login_rotates_the_id_keeps_the_data_and_kills_the_old_id(
    make_app: AppFactory, r: redis.Redis
) -> None:
    app, _ = make_app()
    client = app.test_client()
    client.post("/set/cart/3-apples")
    before = sid(client)
    assert before is not None and r.exists(f"session:{before}")

    response = client.post("/login/alice")
    after = sid(client)
    assert set_cookies(response) and after not in (None, before)
    assert after is not None and after.startswith(user_tag("alice"))
    assert (client.get("/get/cart").text, client.get("/me").text) == ("3-apples", "alice")
    assert moved(r, before) and r.exists(f"session:{after}")
    assert r.zrange(f"session:{user_tag('alice')}#user:alice", 0, -1) == [after.encode()]

    attacker = app.test_client()  # holds the id from before the login (fixation)
    attacker.set_cookie("session", before)
    answer = attacker.get("/me")
    # No deletion either: a request racing the login from the same browser sends this
    # id too, and its deletion could land after the login's new cookie.
    assert answer.text == "None" and not set_cookies(answer)
    assert attacker.get("/get/cart").text == "None"


def test_login_again_and_as_someone_else(make_app: AppFactory, r: redis.Redis) -> None:
    app, tc = make_app()
    client = logged_in(app, "alice")
    first = sid(client)
    client.post("/login/alice")
    second = sid(client)
    assert second != first and moved(r, first)
    client.post("/login/bob")
    assert client.get("/me").text == "bob"
    with app.app_context():
        assert tc.sessions.revoke_user("alice") == 0  # that session is bob's now
        assert tc.sessions.revoke_user("bob") == 1


def test_rotate_keeps_data_and_user(make_app: AppFactory, r: redis.Redis) -> None:
    app, tc = make_app()
    client = logged_in(app, "alice")
    client.post("/set/theme/dark")
    old = sid(client)
    response = client.post("/rotate")
    new = sid(client)
    assert set_cookies(response) and new != old and moved(r, old)
    assert (client.get("/me").text, client.get("/get/theme").text) == ("alice", "dark")
    with app.app_context():
        assert tc.sessions.revoke_user("alice") == 1  # the new id is in the index
    assert client.get("/me").text == "None"


def test_rotate_an_anonymous_session_and_a_new_one(make_app: AppFactory, r: redis.Redis) -> None:
    app, _ = make_app()
    client = app.test_client()
    assert not set_cookies(client.post("/rotate"))  # nothing stored: nothing to send
    client.post("/set/a/1")
    old = sid(client)
    client.post("/rotate")
    assert sid(client) != old and moved(r, old)
    assert client.get("/get/a").text == "1"


def test_logout_destroys_the_session_and_deletes_the_cookie(
    make_app: AppFactory, r: redis.Redis
) -> None:
    app, tc = make_app()
    client = logged_in(app, "alice")
    old = sid(client)
    response = client.post("/logout")
    assert cookie_deleted(response) and sid(client) is None
    assert not r.exists(f"session:{old}")
    with app.app_context():
        assert tc.sessions.revoke_user("alice") == 0
    replay = app.test_client()
    replay.set_cookie("session", old or "")
    assert replay.get("/me").text == "None"


def test_clearing_the_session_deletes_it(make_app: AppFactory, r: redis.Redis) -> None:
    app, _ = make_app()
    client = logged_in(app, "alice")
    old = sid(client)
    assert cookie_deleted(client.post("/clear")) and not r.exists(f"session:{old}")
    # It was loaded, so its user is known: its index entry went with it.
    assert r.zcard(f"session:{user_tag('alice')}#user:alice") == 0


# -- revoke_user ----------------------------------------------------------------------------


def test_revoke_user_ends_every_session_of_that_user_and_no_other(
    make_app: AppFactory, r: redis.Redis
) -> None:
    app, tc = make_app()
    alices = [logged_in(app, "alice") for _ in range(3)]
    bobs = [logged_in(app, "bob") for _ in range(2)]
    anonymous = app.test_client()
    anonymous.post("/set/k/v")
    logged_out = logged_in(app, "alice")
    logged_out.post("/logout")

    with app.app_context():
        assert tc.sessions.revoke_user("alice") == 3
        assert tc.sessions.revoke_user("alice") == 0
    for client in alices:
        assert client.get("/me").text == "None"
    assert [client.get("/me").text for client in bobs] == ["bob", "bob"]
    assert anonymous.get("/get/k").text == "v"
    assert not r.exists(f"session:{user_tag('alice')}#user:alice")


def spy(app: Flask) -> list[str]:
    """The commands the app's Redis client sends from now on (one per round trip)."""
    client = TieredCache.state(app).cache.redis.client
    sent: list[str] = []
    execute = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return execute(*args, **options)

    client.execute_command = counting
    return sent


def test_revoke_user_is_one_round_trip(make_app: AppFactory, redis_server: RedisServer) -> None:
    app, tc = make_app(redis_server.url)
    for _ in range(4):
        logged_in(app, "carol")
    with app.app_context():
        tc.sessions.revoke_user("nobody")  # loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD)
        sent = spy(app)
        assert tc.sessions.revoke_user("carol") == 4
    assert sent == ["EVALSHA"]
    assert command_calls(redis_server)["evalsha"] >= 2  # it reached this very server


def test_user_ids_are_str_or_int(make_app: AppFactory) -> None:
    app, tc = make_app()

    @app.post("/login-int")
    def login_int() -> str:
        tc.sessions.login(42)
        return str(session["user_id"] + 1)

    client = app.test_client()
    assert client.post("/login-int").text == "43"
    with app.app_context():
        with pytest.raises(TypeError):
            tc.sessions.revoke_user(4.2)  # type: ignore[arg-type]
        assert tc.sessions.revoke_user("42") == 1  # 42 and "42" are one user


def test_the_user_index_is_pruned_and_expires(make_app: AppFactory, r: redis.Redis) -> None:
    app, _ = make_app()
    clock = Clock()
    interface(app).clock = clock
    for _ in range(5):
        logged_in(app, "dave")
    index = f"session:{user_tag('dave')}#user:dave"
    assert r.zcard(index) == 5
    assert 0 < r.ttl(index) <= 2 * LIFETIME
    # Every session the index lists is dead two lifetimes after its cookie was issued.
    assert all(
        score <= clock() + 2 * LIFETIME for _, score in r.zrange(index, 0, -1, withscores=True)
    )
    clock.advance(2 * LIFETIME + 1)
    logged_in(app, "dave")
    assert r.zcard(index) == 1


@pytest.mark.parametrize("changed", [False, True], ids=["in-use", "changed-in-use"])
def test_revoke_user_still_ends_sessions_after_the_lifetime_was_raised(
    redis_url: str, r: redis.Redis, changed: bool
) -> None:
    """Index entries were scored by the lifetime of the app that wrote them, and renewed
    only past half of the new one: with the setting raised, a session in use lived on
    (its loads slid its TTL) while its entry was pruned, and revoke_user missed it. A
    change saved meanwhile, which does not score the entry, must not hide that."""
    clock = Clock()
    with made_apps(redis_url, PERMANENT_SESSION_LIFETIME=LIFETIME) as make:
        old, _ = make()
        interface(old).clock = clock
        cookie = sid(logged_in(old, "erin"))
    assert cookie is not None
    with made_apps(redis_url, PERMANENT_SESSION_LIFETIME=3 * LIFETIME // 2) as make:
        new, tc = make()
        interface(new).clock = clock
        thief = new.test_client()
        thief.set_cookie("session", cookie)
        clock.advance(60)
        if changed:
            assert thief.post("/set/cart/apples").status_code == 200
        clock.advance(2540)  # before half the new lifetime: no renewal by age
        assert thief.get("/me").text == "erin"  # its TTL slides to 5400 s from here
        clock.advance(4700)  # past the old entry's two lifetimes, the session alive
        erin = logged_in(new, "erin")  # prunes the index of what it thinks dead
        with new.app_context():
            assert tc.sessions.revoke_user("erin") == 2
        assert (thief.get("/me").text, erin.get("/me").text) == ("None", "None")


def test_apps_with_two_lifetimes_do_not_rewrite_an_unchanged_session(
    redis_url: str, r: redis.Redis
) -> None:
    """A rolling deploy that raises the lifetime: two apps at once, and a hook that
    "changes" the session to what it holds on every request. Each app's own lifetime in
    the stored bytes made every request a rewrite (which also undid concurrent changes)."""
    clock = Clock()
    with made_apps(redis_url, PERMANENT_SESSION_LIFETIME=LIFETIME) as make:
        short, _ = make()
        long, _ = make(PERMANENT_SESSION_LIFETIME=3 * LIFETIME // 2)
        for app in (short, long):
            interface(app).clock = clock

            @app.before_request
            def remember_me() -> None:
                session.permanent = True

        client = logged_in(short, "fay")
        key = f"session:{sid(client)}"
        stored = r.get(key)
        for app in (long, short, long, short):
            clock.advance(60)
            answer = app.test_client()
            answer.set_cookie("session", sid(client) or "")
            assert answer.get("/me").text == "fay"
            assert r.get(key) == stored  # not rewritten


def test_manager_needs_sessions_on(redis_url: str) -> None:
    app = Flask(__name__)
    app.config.update(TIERED_CACHE_REDIS_URL=redis_url, TIERED_CACHE_INVALIDATION=False)
    tc = TieredCache(app)
    try:
        with app.app_context(), pytest.raises(RuntimeError, match="TIERED_CACHE_SESSIONS"):
            tc.sessions
    finally:
        close_app(app)


def test_login_outside_a_request_is_an_error(make_app: AppFactory) -> None:
    app, tc = make_app()
    with app.app_context(), pytest.raises(RuntimeError, match="request"):
        tc.sessions.login("alice")


# -- no rewrite of unmodified sessions, lazy loading, sliding TTL --------------------------------


def test_an_unmodified_session_is_not_rewritten(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app = quiet_app(make_app, redis_server)
    client = logged_in(app, "alice")
    key = f"session:{sid(client)}"
    admin = redis_server.client()
    admin.expire(key, 100)
    redis_server.client().config_resetstat()

    for _ in range(10):
        response = client.get("/me")
        assert response.text == "alice" and not set_cookies(response)
    calls = command_calls(redis_server)
    assert calls.pop("getex") == 10  # one round trip each, which slides the TTL...
    calls.pop("info", None)
    assert calls == {}  # ... and nothing else: no SET, no EXPIRE, no script
    assert admin.ttl(key) > LIFETIME - 60

    client.post("/set/theme/dark")
    assert command_calls(redis_server)["set"] == 1
    admin.close()


def test_marking_a_session_permanent_again_on_every_request_does_not_rewrite_it(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """The ``before_request: session.permanent = True`` idiom marks the session modified
    on every request without changing it: no write (which would also undo a concurrent
    request's real change)."""
    app = quiet_app(make_app, redis_server)

    @app.before_request
    def remember_me() -> None:
        session.permanent = True

    client = logged_in(app, "alice")
    client.get("/me")  # made permanent, if it was not: written once
    redis_server.client().config_resetstat()
    for _ in range(5):
        assert client.get("/me").text == "alice"
    calls = command_calls(redis_server)
    calls.pop("info", None)
    assert calls == {"getex": 5}
    client.post("/set/theme/dark")
    assert client.get("/get/theme").text == "dark"


def test_an_id_no_session_holds_is_replaced_on_first_use(make_app: AppFactory) -> None:
    """Session fixation: a planted cookie's id, unknown to Redis, is not the id the
    request works with once the session is used (reading ``sid`` alone loads nothing,
    so logging it costs no Redis call)."""
    app, _ = make_app()

    @app.get("/sid")
    def show_sid() -> str:
        session.get("user_id")
        return str(session.sid)

    planted = interface(app).store.new_sid()
    client = app.test_client()
    client.set_cookie("session", planted)
    shown = client.get("/sid").text
    assert shown != planted
    known = logged_in(app, "alice")
    assert known.get("/sid").text == sid(known)  # a live id is the session's own


def test_a_request_that_ignores_the_session_makes_no_redis_call(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app = quiet_app(make_app, redis_server)
    client = logged_in(app, "alice")
    redis_server.client().config_resetstat()
    for _ in range(5):
        response = client.get("/plain")
        assert response.text == "plain" and "Vary" not in response.headers
    assert command_calls(redis_server) == {}


def test_any_read_marks_the_session_accessed(make_app: AppFactory) -> None:
    app, _ = make_app()
    response = app.test_client().get("/has/x")
    assert (response.text, response.headers.get("Vary")) == ("no", "Cookie")


READS: dict[str, Callable[[TieredSession], object]] = {
    "in": lambda s: "k" in s,
    "[]": lambda s: s["k"],
    "get": lambda s: s.get("k"),
    "iter": list,
    "len": len,
    "bool": bool,
    "keys": lambda s: s.keys(),
    "items": lambda s: s.items(),
    "values": lambda s: s.values(),
    "copy": lambda s: s.copy(),
    "dict()": dict,
    "==": lambda s: s == {},
    "|": lambda s: s | {},
    "reversed": lambda s: list(reversed(s)),
    "permanent": lambda s: s.permanent,
    "new": lambda s: s.new,
}


@pytest.mark.parametrize("read", READS.values(), ids=list(READS))
def test_every_read_loads_and_marks_accessed(read: Callable[[TieredSession], object]) -> None:
    loads: list[str] = []

    def loader(session: TieredSession) -> None:
        loads.append(session.sid)
        session.reset(session.sid, permanent=True)
        dict.__setitem__(session, "k", "v")

    session = TieredSession("a" * 43, loader=loader)
    assert not session.accessed and "not loaded" in repr(session) and not loads
    read(session)
    assert session.accessed and loads == ["a" * 43] and not session.modified


def test_writes_load_first_and_mark_modified() -> None:
    def loader(session: TieredSession) -> None:
        session.reset(session.sid, permanent=True)
        dict.__setitem__(session, "kept", 1)

    session = TieredSession("b" * 43, loader=loader)
    session["new"] = 2
    assert session.modified and dict(session) == {"_permanent": True, "kept": 1, "new": 2}


# -- the cookie: only when new, rotated, or past half its lifetime --------------------------------


def test_set_cookie_only_when_new_rotated_or_past_half_life(
    make_app: AppFactory, redis_url: str
) -> None:
    app, _ = make_app()
    clock = Clock()
    interface(app).clock = clock
    client = app.test_client()

    assert not set_cookies(client.get("/me"))  # empty: nothing stored, nothing sent
    assert set_cookies(client.post("/set/a/1"))  # new
    assert not set_cookies(client.post("/set/a/2"))  # changed, same id
    assert set_cookies(client.post("/login/alice"))  # rotated
    assert not set_cookies(client.get("/me"))
    clock.advance(LIFETIME / 2 - 5)
    assert not set_cookies(client.get("/me")) and not set_cookies(client.post("/set/a/3"))
    clock.advance(10)
    renewed = client.get("/me")
    [cookie] = set_cookies(renewed)
    expires = datetime.datetime.fromtimestamp(clock() + LIFETIME, datetime.UTC)
    assert expires.strftime("%d %b %Y %H:%M:%S GMT") in cookie
    assert not set_cookies(client.get("/me"))  # the renewal was stored
    assert client.get("/get/a").text == "3"


def test_a_non_permanent_session_has_a_browser_cookie_and_no_renewal(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app = quiet_app(make_app, redis_server, SESSION_PERMANENT=False)
    clock = Clock()
    interface(app).clock = clock
    client = app.test_client()
    [cookie] = set_cookies(client.post("/set/a/1"))
    assert "Expires" not in cookie
    clock.advance(LIFETIME)
    redis_server.client().config_resetstat()
    assert not set_cookies(client.get("/get/a"))
    assert command_calls(redis_server) == {"getex": 1}


def test_changing_permanence_sends_the_cookie_again(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """ "Remember me": a browser cookie becomes one with an expiry date, and back."""
    app = quiet_app(make_app, redis_server, SESSION_PERMANENT=False)
    make_permanent: list[bool] = []

    @app.post("/permanent")
    def permanent() -> str:
        session.permanent = make_permanent[-1]
        return "ok"

    client = app.test_client()
    [cookie] = set_cookies(client.post("/set/a/1"))
    assert "Expires" not in cookie
    make_permanent.append(True)
    [cookie] = set_cookies(client.post("/permanent"))
    assert "Expires" in cookie
    assert not set_cookies(client.post("/permanent"))  # no change: no cookie
    assert not set_cookies(client.get("/get/a"))
    make_permanent.append(False)
    [cookie] = set_cookies(client.post("/permanent"))
    assert "Expires" not in cookie
    assert client.get("/get/a").text == "1"


def test_a_logged_in_non_permanent_session_renews_its_index_without_a_cookie(
    make_app: AppFactory, r: redis.Redis
) -> None:
    app, tc = make_app(SESSION_PERMANENT=False)
    clock = Clock()
    interface(app).clock = clock
    client = logged_in(app, "erin")
    clock.advance(2 * LIFETIME + 10)  # its index entry would be pruned by now...
    assert not set_cookies(client.get("/me"))  # ... but this request renewed it
    logged_in(app, "erin")  # prunes what is dead
    with app.app_context():
        assert tc.sessions.revoke_user("erin") == 2


def test_the_per_user_page_is_a_hit_and_never_reaches_another_user(make_app: AppFactory) -> None:
    app, tc = make_app()
    rendered: list[str] = []

    @app.get("/dashboard")
    @tc.cached(per_user=True)
    def dashboard() -> str:
        rendered.append(session.get("user_id"))
        return f"dashboard of {session.get('user_id')}"

    alice, bob, anonymous = logged_in(app, "alice"), logged_in(app, "bob"), app.test_client()
    first = alice.get("/dashboard")
    assert (first.text, first.headers["X-Cache"]) == ("dashboard of alice", "MISS")
    for _ in range(3):
        again = alice.get("/dashboard")
        assert (again.text, again.headers["X-Cache"]) == ("dashboard of alice", "HIT-L1")
        assert not set_cookies(again) and "Cookie" in again.headers["Vary"]
    assert bob.get("/dashboard").text == "dashboard of bob"
    assert anonymous.get("/dashboard").text == "dashboard of None"
    assert rendered == ["alice", "bob", None]
    assert TieredCache.state(app).cache.stats()["l1_items"] > 0  # pages, not sessions


def test_sessions_are_never_in_l1(make_app: AppFactory) -> None:
    app, _ = make_app()
    client = logged_in(app, "alice")
    for _ in range(3):
        client.get("/me")
    assert TieredCache.state(app).cache.stats()["l1_items"] == 0
