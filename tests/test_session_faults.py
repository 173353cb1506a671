"""Sessions when Redis fails, when requests race a revocation, across real processes, and
on a real Redis Cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime

import pytest
import redis
from flask import Flask, Response, request, session
from flask.testing import FlaskClient
from redis.cluster import RedisCluster
from werkzeug.test import TestResponse

from tests.flask_apps import close_app
from tests.procs import run_in_processes
from tests.redis_cluster import RedisClusterServers
from tests.redis_harness import RedisServer
from tests.session_apps import (
    AppFactory,
    Clock,
    interface,
    logged_in,
    made_apps,
    moved,
    session_app,
    set_hook,
    sid,
)
from tiered_cache import TieredCache
from tiered_cache._session_store import MOVED, user_tag

HANG_GUARD = 1.0  # seconds; the socket timeout is 0.25 s
QUIET = 0.3  # a thread whose Redis call timed out skips Redis for one socket timeout


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Session apps on the Redis each test names; closed after the test."""
    with made_apps() as make:
        yield make


def timed(call: Callable[[], TestResponse]) -> tuple[TestResponse, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(response: TestResponse, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "Set-Cookie" not in response.headers
    assert elapsed < HANG_GUARD


# -- Redis down or stalled -----------------------------------------------------------------------


def test_redis_killed_503_for_session_users_200_for_the_rest(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app, _ = make_app(redis_server.url)
    client = logged_in(app, "alice")
    redis_server.kill()

    assert_unavailable(*timed(lambda: client.get("/me")))
    assert_unavailable(*timed(lambda: client.post("/set/a/1")))
    assert_unavailable(*timed(lambda: client.post("/logout")))
    assert client.get("/plain").text == "plain"
    # A new visitor's first write needs Redis only when the response is saved: the
    # response becomes the 503 rather than a 200 whose session was lost.
    visitor = app.test_client()
    assert_unavailable(*timed(lambda: visitor.post("/set/a/1")))
    assert sid(visitor) is None


def test_redis_paused_503_within_a_second_then_the_session_is_intact(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app, _ = make_app(redis_server.url)
    client = logged_in(app, "alice")
    client.post("/set/cart/3-apples")
    redis_server.pause()
    try:
        assert_unavailable(*timed(lambda: client.get("/me")))
        assert_unavailable(*timed(lambda: client.get("/get/cart")))
        response, elapsed = timed(lambda: client.get("/plain"))
        assert response.status_code == 200 and elapsed < HANG_GUARD
    finally:
        redis_server.resume()
    time.sleep(QUIET)
    # Not logged out, nothing lost: the outage was an error, never an empty session.
    assert (client.get("/me").text, client.get("/get/cart").text) == ("alice", "3-apples")


def test_a_server_that_refuses_the_session_scripts_is_a_503_not_a_500(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """An ACL without scripting (a managed Redis, say): every change, login, rotation
    and revocation runs a script, and its NOPERM reached Flask as a 500."""
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all")
    app, _ = make_app(redis_server.url.replace("redis://", "redis://app:pw@"))
    client = logged_in(app, "alice")
    client.post("/set/cart/3-apples")
    admin.execute_command("ACL", "SETUSER", "app", "-evalsha", "-eval", "-script")
    try:
        assert_unavailable(*timed(lambda: client.post("/set/cart/4-pears")))
        assert_unavailable(*timed(lambda: app.test_client().post("/login/bob")))
        assert client.get("/get/cart").text == "3-apples"  # reads need no script
    finally:
        admin.execute_command("ACL", "SETUSER", "app", "+@all")
    assert client.post("/set/cart/4-pears").status_code == 200
    assert client.get("/get/cart").text == "4-pears"


def test_an_open_breaker_answers_503_without_calling_redis(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app, _ = make_app(
        redis_server.url, TIERED_CACHE_BREAKER_FAILURES=2, TIERED_CACHE_BREAKER_RESET=60
    )
    client = logged_in(app, "alice")
    tier = TieredCache.state(app).cache.redis
    redis_server.pause()
    try:
        for _ in range(2):
            assert client.get("/me").status_code == 503
            time.sleep(QUIET)  # so that the next request tries Redis again
        assert tier.breaker.is_open
        failed_calls = tier.errors
        response, elapsed = timed(lambda: client.get("/me"))
        assert_unavailable(response, elapsed)
        assert tier.errors == failed_calls  # refused by the breaker: Redis was not asked
        assert response.headers["Retry-After"] == "60"
    finally:
        redis_server.resume()


def test_a_failed_load_is_not_retried_within_the_request(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app, _ = make_app(redis_server.url)
    attempts: list[int] = []

    def hook() -> None:
        for _ in range(3):
            try:
                session.get("user_id")
            except Exception:  # the view insists; the session must not retry
                attempts.append(TieredCache.state(app).cache.redis.errors)
        session["x"] = 1  # not saved either

    set_hook(app, hook)
    client = logged_in(app, "alice")
    redis_server.kill()
    response, elapsed = timed(lambda: client.post("/hook"))
    assert response.status_code == 503, response.text
    assert attempts == [attempts[0]] * 3 and elapsed < HANG_GUARD


def test_a_session_first_used_outside_the_view_during_an_outage_is_a_503(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """An after_request hook (Flask-Login's remember-cookie refresh reads the session on
    every request) or an error handler: Flask turns what they raise into a 500."""
    app, _ = make_app(redis_server.url)

    @app.after_request
    def remember(response: Response) -> Response:
        if request.path != "/login/alice":
            "_remember" in session  # the read is the point
        return response

    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[str, int]:
        return f"nothing here, {session.get('user_id')}", 404

    client = logged_in(app, "alice")
    redis_server.kill()
    assert_unavailable(*timed(lambda: client.get("/plain")))
    assert_unavailable(*timed(lambda: client.get("/no-such-page")))


@pytest.mark.parametrize("handled", [Exception, 500, 503])
def test_an_error_page_that_uses_the_session_during_an_outage_is_a_503(
    make_app: AppFactory, redis_server: RedisServer, handled: type[Exception] | int
) -> None:
    """An error page showing who is logged in: for the outage's 503, or for another
    error's 500, it raises the outage again where Flask has no handler left (a 500)."""
    app, _ = make_app(redis_server.url)

    @app.errorhandler(handled)
    def error_page(error: Exception) -> tuple[str, int]:
        return f"error, {session.get('user_id')}", getattr(error, "code", 500)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the database is down too")

    client = logged_in(app, "alice")
    redis_server.kill()
    assert_unavailable(*timed(lambda: client.get("/me")))
    failed = client.get("/boom")
    if handled == 503:  # Flask's own 500 page, which uses no session: a plain 500
        assert failed.status_code == 500
    else:
        assert_unavailable(failed, 0.0)


def test_a_login_whose_later_save_fails_still_sends_the_new_cookie(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """The login moved the session to a new id in Redis before the outage: without the
    new cookie the browser keeps the old, dead id, logged out, its data orphaned."""
    app, _ = make_app(redis_server.url)

    def log_in_then_lose_redis() -> None:
        TieredCache.state(app).extras["sessions"].login("alice")
        session["welcome"] = "1"
        redis_server.pause()  # the save of "welcome" times out

    set_hook(app, log_in_then_lose_redis)
    client = app.test_client()
    client.post("/set/cart/3")
    before = sid(client)
    response = client.post("/hook")
    assert response.status_code == 503
    after = sid(client)
    assert after is not None and after != before
    redis_server.resume()
    time.sleep(QUIET)  # the thread that timed out skips Redis for one socket timeout
    assert client.get("/me").text == "alice"
    assert client.get("/get/cart").text == "3"


# -- a request in flight when its session is revoked ------------------------------------------


def revoke_in_another_process(url: str, user: str) -> int:
    """Revoke ``user`` from an app of its own, in a process of its own."""
    app, tc = session_app(url)
    try:
        with app.app_context():
            return tc.sessions.revoke_user(user)
    finally:
        close_app(app)


IN_FLIGHT: dict[str, Callable[[TieredCache], None]] = {
    "modified": lambda tc: session.__setitem__("cart", "4-apples"),
    "rotated": lambda tc: tc.sessions.rotate(),
    "renewed": lambda tc: None,  # unmodified, but past half its life: a renewal is due
    "read only": lambda tc: None,
    "emptied": lambda tc: session.clear(),  # flask-session deletes an emptied session
}


def in_flight(
    app: Flask, tc: TieredCache, action: str, meanwhile: Callable[[FlaskClient], None]
) -> tuple[FlaskClient, TestResponse]:
    """Alice's ``/hook`` request loads her session, waits while ``meanwhile(alice)`` runs,
    then does ``action`` and ends; its client and response."""
    clock = Clock()
    interface(app).clock = clock
    entered, release = threading.Event(), threading.Event()

    def hook() -> None:
        assert session.get("user_id") == "alice"  # loaded before what happens meanwhile
        entered.set()
        assert release.wait(30)
        IN_FLIGHT[action](tc)

    set_hook(app, hook)
    client = logged_in(app, "alice")
    if action == "renewed":
        clock.advance(3600 * 24 * 20)
    responses: list[TestResponse] = []
    request = threading.Thread(target=lambda: responses.append(client.post("/hook")))
    request.start()
    try:
        assert entered.wait(30)
        meanwhile(client)
    finally:
        release.set()
        request.join(30)
    [response] = responses
    assert response.status_code == 200
    return client, response


@pytest.mark.parametrize("action", list(IN_FLIGHT))
def test_a_session_revoked_in_flight_is_not_written_back(
    make_app: AppFactory, redis_server: RedisServer, action: str
) -> None:
    app, tc = make_app(redis_server.url)

    def revoke(_: FlaskClient) -> None:
        assert run_in_processes(revoke_in_another_process, [(redis_server.url, "alice")]) == [1]

    client, response = in_flight(app, tc, action, revoke)
    admin = redis_server.client()
    assert [k for k in admin.keys("session:*")] == []  # nothing brought back, nothing new
    # No cookie either: not renewed, and not deleted (the session may have moved under
    # a concurrent login from the same browser, whose new cookie a deletion could undo).
    assert "Set-Cookie" not in response.headers
    assert client.get("/me").text == "None"
    admin.close()


@pytest.mark.parametrize("action", list(IN_FLIGHT))
def test_a_session_moved_in_flight_keeps_its_old_id_dead(
    make_app: AppFactory, redis_server: RedisServer, action: str
) -> None:
    """A request that loaded the session before another request of the browser rotated
    it must not write it back under the old id (which would keep that id alive), nor
    send a cookie."""
    app, tc = make_app(redis_server.url)
    other = app.test_client()  # the same browser, another request

    def rotate(alice: FlaskClient) -> None:
        other.set_cookie("session", sid(alice) or "")
        assert "Set-Cookie" in other.post("/rotate").headers

    client, response = in_flight(app, tc, action, rotate)
    assert "Set-Cookie" not in response.headers
    admin = redis_server.client()
    assert moved(admin, sid(client))  # the old id stays dead
    assert other.get("/me").text == "alice"  # the new one is alive
    admin.close()


def test_a_value_that_cannot_be_stored_after_a_login_is_a_500_with_the_new_cookie(
    make_app: AppFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The login moved the session to a new id; the save of a later value the format
    cannot store fails, as Flask's own session does: a 500, the error logged. Without the
    new cookie on that 500 the browser would keep the old, dead id: logged out, its cart
    orphaned."""
    app, tc = make_app(redis_server.url)

    def log_in_then_store_an_object() -> None:
        tc.sessions.login("alice")
        session["last_login"] = object()

    set_hook(app, log_in_then_store_an_object)
    client = app.test_client()
    client.post("/set/cart/3-apples")
    before = sid(client)
    response = client.post("/hook")
    assert response.status_code == 500
    assert "the session cannot be stored" in caplog.text
    assert sid(client) not in (None, before)
    assert client.get("/me").text == "alice" and client.get("/get/cart").text == "3-apples"
    assert client.get("/get/last_login").text == "None"


def test_a_rotation_that_lost_the_race_to_a_login_sends_no_cookie(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """The request rotates after another request of the browser logged in (the session
    moved), then writes: its write goes nowhere, and it sends no anonymous cookie, which
    answered after the login's would log the user out."""
    app, tc = make_app(redis_server.url)
    browser = app.test_client()
    browser.post("/set/cart/3-apples")
    tab = app.test_client()  # the same browser, another request in flight
    tab.set_cookie("session", sid(browser) or "")
    loaded, logged_in_meanwhile = threading.Event(), threading.Event()

    def rotate_then_write() -> None:
        session.get("cart")
        loaded.set()
        assert logged_in_meanwhile.wait(30)
        tc.sessions.rotate()
        session["flash"] = "privileges changed"

    set_hook(app, rotate_then_write)
    responses: list[TestResponse] = []
    request = threading.Thread(target=lambda: responses.append(tab.post("/hook")))
    request.start()
    try:
        assert loaded.wait(30)
        assert browser.post("/login/alice").status_code == 200
    finally:
        logged_in_meanwhile.set()
        request.join(30)
    [response] = responses
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert browser.get("/me").text == "alice" and browser.get("/get/cart").text == "3-apples"


def test_a_request_with_the_cookie_a_login_replaced_sends_no_cookie(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """The race the marker is for: a request sent with the old cookie, answered after the
    login's response, must not set a cookie of its own (it would log the user out)."""
    app, _ = make_app(redis_server.url)
    browser = app.test_client()
    browser.post("/set/cart/3-pears")
    old = sid(browser)
    assert old is not None and browser.post("/login/alice").status_code == 200
    late = app.test_client()  # the request still carrying the old cookie
    late.set_cookie("session", old)
    admin = redis_server.client()
    before = sorted(admin.keys("session:*"))
    for answer in (late.post("/set/flash/hello"), late.get("/me")):
        assert answer.status_code == 200 and "Set-Cookie" not in answer.headers
    assert late.get("/me").text == "None"  # an empty, inert session
    assert sorted(admin.keys("session:*")) == before  # nothing stored for it
    assert browser.get("/me").text == "alice" and browser.get("/get/cart").text == "3-pears"
    marker = admin.get(f"session:{old}") or b""
    assert int(marker[len(MOVED) :]) <= time.time() + 31  # inert for 30 s at most
    admin.set(f"session:{old}", MOVED + b"1000")  # ... and after that, a dead id
    revived = late.post("/set/flash/hello")
    assert sid(late) not in (None, old) and late.get("/get/flash").text == "hello"
    assert "Set-Cookie" in revived.headers
    admin.close()


# -- real processes --------------------------------------------------------------------------


def whoami_in_another_process(url: str, cookie: str) -> str:
    """``/me`` for ``cookie``, served by an app of this process (+ what it did to the cookie)."""
    app, _ = session_app(url)
    try:
        client = app.test_client()
        client.set_cookie("session", cookie)
        response = client.get("/me")
        if "Set-Cookie" in response.headers:
            return response.text + (" (cookie deleted)" if sid(client) is None else " (?)")
        return response.text
    finally:
        close_app(app)


def test_sessions_are_shared_by_processes(make_app: AppFactory, redis_url: str) -> None:
    app, tc = make_app(redis_url)
    alice, bob = logged_in(app, "alice"), logged_in(app, "bob")
    cookies = [sid(alice), sid(bob)]
    assert run_in_processes(whoami_in_another_process, [(redis_url, c) for c in cookies]) == [
        "alice",
        "bob",
    ]
    with app.app_context():
        tc.sessions.revoke_user("alice")
    # Revoked: logged out everywhere, its cookie left alone (see _session_interface).
    assert run_in_processes(whoami_in_another_process, [(redis_url, c) for c in cookies]) == [
        "None",
        "bob",
    ]


# -- Redis Cluster ---------------------------------------------------------------------------


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterServers) -> Iterator[str]:
    first = redis_cluster.servers[0]
    admin = RedisCluster(host=first.host, port=first.port)
    admin.flushall()
    yield redis_cluster.url
    admin.close()


def test_sessions_on_a_redis_cluster(make_app: AppFactory, cluster_url: str) -> None:
    app, tc = make_app(cluster_url)
    admin = TieredCache.state(app).cache.redis.client
    anonymous = [app.test_client() for _ in range(6)]
    for n, client in enumerate(anonymous):
        client.post(f"/set/n/{n}")
    assert len({admin.keyslot(f"session:{sid(c)}") for c in anonymous}) > 1  # spread out

    before = sid(anonymous[0])
    anonymous[0].post("/login/alice")  # the old key is in another slot than the new one
    assert moved(admin, before)  # marked moved: its data is gone
    assert anonymous[0].get("/get/n").text == "0"
    alices = [anonymous[0], *(logged_in(app, "alice") for _ in range(2))]
    bob = logged_in(app, "bob")
    slot = admin.keyslot(f"session:{user_tag('alice')}#user:alice")
    assert {admin.keyslot(f"session:{sid(c)}") for c in alices} == {slot}

    alices[1].post("/rotate")
    alices[2].post("/set/theme/dark")
    assert alices[1].get("/me").text == "alice"
    with app.app_context():
        assert tc.sessions.revoke_user("alice") == 3
    assert [c.get("/me").text for c in alices] == ["None"] * 3
    assert bob.get("/me").text == "bob"
    assert [c.get("/get/n").text for c in anonymous[1:]] == ["1", "2", "3", "4", "5"]
    anonymous[1].post("/rotate")
    assert anonymous[1].get("/get/n").text == "1"
    bob.post("/logout")
    assert bob.get("/me").text == "None"
    carol = logged_in(app, "carol")
    carol.post("/clear")  # loaded: its index entry goes in the same pipeline
    assert carol.get("/me").text == "None"
    assert admin.zcard(f"session:{user_tag('carol')}#user:carol") == 0


def test_flask_session_itself_mishandles_a_cluster_client(cluster_url: str) -> None:
    """Why the interface does not call RedisSessionInterface.__init__."""
    from flask_session.redis import RedisSessionInterface

    cluster = RedisCluster.from_url(cluster_url.replace("redis+cluster", "redis"))
    try:
        with pytest.warns(RuntimeWarning, match="No valid Redis instance"):
            interface = RedisSessionInterface(Flask(__name__), client=cluster)
        assert isinstance(interface.client, redis.Redis)  # a localhost client, not ours
        assert interface.client is not cluster
    finally:
        cluster.close()


def test_a_renewal_never_overwrites_a_change_made_meanwhile(
    make_app: AppFactory, redis_url: str
) -> None:
    app, _ = make_app(redis_url)
    clock = Clock()
    interface(app).clock = clock
    entered, release = threading.Event(), threading.Event()

    def hook() -> None:  # reads only; its renewal is due when it saves
        assert session.get("cart") == "3-apples"
        entered.set()
        assert release.wait(30)

    set_hook(app, hook)
    client = logged_in(app, "alice")
    client.post("/set/cart/3-apples")
    clock.advance(3600 * 24 * 20)  # past half of the 31-day cookie
    responses: list[TestResponse] = []
    slow = threading.Thread(target=lambda: responses.append(client.get("/hook")))
    slow.start()
    try:
        assert entered.wait(30)
        other_tab = app.test_client()
        other_tab.set_cookie("session", sid(client) or "")
        assert other_tab.post("/set/cart/4-apples").headers.get("Set-Cookie")  # renewed too
    finally:
        release.set()
        slow.join(30)
    assert responses[0].status_code == 200 and "Set-Cookie" not in responses[0].headers
    assert client.get("/get/cart").text == "4-apples"


def test_a_renewal_whose_reply_is_lost_still_renews_the_cookie(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    """Redis stalls as a read-only request renews its session: the renewal may run once
    Redis resumes, with its reply lost to the timeout. The cookie was not sent, while the
    stored "issued" time became now: no renewal fell due again before the browser's old
    cookie expired, and the user was logged out while the session lived on."""
    app, _ = make_app(redis_server.url)
    clock = Clock()
    interface(app).clock = clock

    def hook() -> None:  # reads only; its renewal is due when it saves
        assert session.get("cart") == "3-apples"
        redis_server.pause()

    set_hook(app, hook)
    client = logged_in(app, "alice")
    client.post("/set/cart/3-apples")
    clock.advance(3600 * 24 * 20)  # past half of the 31-day cookie
    try:
        response, elapsed = timed(lambda: client.get("/hook"))
    finally:
        redis_server.resume()
    assert response.status_code == 200 and elapsed < HANG_GUARD
    cookie = response.headers["Set-Cookie"]
    assert sid(client) in cookie
    expires = parsedate_to_datetime(cookie.split("Expires=")[1].split(";")[0])
    assert abs(expires.timestamp() - (clock() + 31 * 24 * 3600)) < 5
    time.sleep(QUIET)  # the thread that timed out skips Redis that long
    assert client.get("/get/cart").text == "3-apples"
