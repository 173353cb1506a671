"""Sessions: bytes in Redis are never unpickled; cookies and settings are checked."""

from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from flask import Flask

from tests.redis_harness import RedisServer
from tests.session_apps import (
    AppFactory,
    command_calls,
    cookie_deleted,
    logged_in,
    made_apps,
    quiet_app,
    set_cookies,
    sid,
)
from tiered_cache import ConfigurationError, TieredCache
from tiered_cache._session_store import META_KEY, Codec, Record


@pytest.fixture
def make_app(redis_url: str) -> Iterator[AppFactory]:
    """Session apps on the shared Redis; closed after the test."""
    with made_apps(redis_url) as make:
        yield make


# -- decoding: never pickle ----------------------------------------------------------------------


class Hostile:
    """Unpickling this makes a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_a_hostile_pickle_is_never_run(
    make_app: AppFactory, r: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app()
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Hostile(marker))
    forged = "x" * 43
    r.set(f"session:{forged}", payload)
    client = app.test_client()
    client.set_cookie("session", forged)
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        response = client.get("/me")
    assert response.text == "None" and not marker.exists()
    assert any("not readable" in record.getMessage() for record in caplog.records)

    # The control: flask-session's own serializer runs it (so this test can fail).
    from flask_session.base import MsgSpecSerializer

    MsgSpecSerializer(app, "msgpack").decode(payload)
    assert marker.exists()


@pytest.mark.parametrize(
    "stored",
    [
        b"\xff\x00 not msgpack",
        b"",
        msgspec.msgpack.encode([1, 2]),
        msgspec.msgpack.encode({1: 2}),
        b"\x91" * 100_000,  # nested deeper than msgspec decodes: RecursionError
    ],
    ids=["garbage", "empty", "a list", "int keys", "too deep"],
)
def test_undecodable_bytes_are_an_empty_session_and_a_warning(
    make_app: AppFactory, r: redis.Redis, caplog: pytest.LogCaptureFixture, stored: bytes
) -> None:
    app, _ = make_app()
    forged = "y" * 43
    r.set(f"session:{forged}", stored)
    client = app.test_client()
    client.set_cookie("session", forged)
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        assert client.get("/get/a").text == "None"
    assert [rec.levelno for rec in caplog.records if "not readable" in rec.getMessage()] == [
        logging.WARNING
    ]
    client.post("/set/a/1")  # a new session under a new id; the bad bytes are left alone
    assert sid(client) != forged and r.get(f"session:{forged}") == stored


def test_a_key_of_another_type_is_unreadable_not_an_outage(
    make_app: AppFactory, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app()
    forged = "z" * 43
    r.rpush(f"session:{forged}", "x")
    client = app.test_client()
    client.set_cookie("session", forged)
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        response = client.get("/me")
    assert (response.status_code, response.text) == (200, "None")  # an empty session
    assert any("not readable" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "issued",
    [10**400, float("nan"), 1e308, -5.0, True, "1700000000"],
    ids=["huge-int", "nan", "1e308", "negative", "bool", "string"],
)
def test_an_implausible_issued_time_is_ignored_and_renewed(
    make_app: AppFactory, r: redis.Redis, issued: Any
) -> None:
    """A tampered "issued" time (too large for a float, not finite, far ahead) is not
    ours: the session is read, its cookie reissued with a real time; never a 500."""
    app, _ = make_app()
    forged = "t" * 43
    r.set(
        f"session:{forged}",
        _stored({"a": "1", "_permanent": True, META_KEY: {"t": issued, "u": None}}),
    )
    client = app.test_client()
    client.set_cookie("session", forged)
    first = client.get("/get/a")
    assert first.status_code == 200 and first.text == "1"
    assert set_cookies(first), "an implausible issued time must be renewed"
    assert not set_cookies(client.get("/get/a"))


def _stored(data: dict[str, Any]) -> bytes:
    """Session bytes as anyone could write them: msgpack, else JSON text (big ints)."""
    try:
        return msgspec.msgpack.encode(data)
    except OverflowError:
        return json.dumps(data).encode()


def test_an_issued_time_ahead_of_the_clock_is_renewed(make_app: AppFactory, r: redis.Redis) -> None:
    """A year ahead is not clock skew: renewing on time would never happen."""
    app, _ = make_app()
    forged = "f" * 43
    ahead = datetime.datetime.now(datetime.UTC).timestamp() + 365 * 86400
    r.set(f"session:{forged}", _stored({"a": "1", "_permanent": True, META_KEY: {"t": ahead}}))
    client = app.test_client()
    client.set_cookie("session", forged)
    assert set_cookies(client.get("/get/a"))


def test_an_error_reply_of_the_server_is_a_503_not_an_empty_session(
    make_app: AppFactory, r: redis.Redis, redis_url: str
) -> None:
    """Only the data makes a session unreadable: a server refusing the read (an ACL
    without GETEX here) must not log every user out."""
    user = f"no-getex-{os.getpid()}"
    r.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-getex"])
    try:
        app, _ = make_app(url=redis_url.replace("redis://", f"redis://{user}:pw@", 1))
        stored = "g" * 43
        r.set(f"session:{stored}", msgspec.msgpack.encode({"a": "1"}))
        client = app.test_client()
        client.set_cookie("session", stored)
        refused = client.get("/get/a")
        assert refused.status_code == 503 and "Set-Cookie" not in refused.headers
        assert client.get("/plain").status_code == 200  # pages that do not use it work
        assert r.get(f"session:{stored}") is not None
    finally:
        r.acl_deluser(user)


def test_a_session_written_by_flask_session_is_read(make_app: AppFactory, r: redis.Redis) -> None:
    app, _ = make_app()
    old = "w" * 43
    r.set(f"session:{old}", msgspec.msgpack.encode({"_permanent": True, "user_id": "frank"}))
    client = app.test_client()
    client.set_cookie("session", old)
    first = client.get("/me")
    assert first.text == "frank" and set_cookies(first)  # no issued time: renewed once
    assert META_KEY.encode() in (r.get(f"session:{old}") or b"")
    assert not set_cookies(client.get("/me"))


def test_json_format_reads_msgpack_sessions_too(make_app: AppFactory, r: redis.Redis) -> None:
    app, _ = make_app(SESSION_SERIALIZATION_FORMAT="json")
    client = app.test_client()
    client.post("/set/a/1")
    assert (r.get(f"session:{sid(client)}") or b"").startswith(b"{")
    old = "v" * 43
    r.set(f"session:{old}", msgspec.msgpack.encode({"a": "from msgpack"}))
    other = app.test_client()
    other.set_cookie("session", old)
    assert other.get("/get/a").text == "from msgpack"


def test_bogus_cookies_are_ignored_without_a_lookup(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app = quiet_app(make_app, redis_server)
    redis_server.client().config_resetstat()
    for bogus in ("short", "{zzzz}" + "a" * 43, "a" * 43 + "}", "../../etc/passwd" + "a" * 20):
        client = app.test_client()
        client.set_cookie("session", bogus)
        response = client.get("/me")
        assert response.text == "None" and cookie_deleted(response)
    assert "getex" not in command_calls(redis_server)


def test_signed_ids(make_app: AppFactory) -> None:
    app, _ = make_app(SESSION_USE_SIGNER=True)
    client = logged_in(app, "alice")
    value = sid(client)
    assert value is not None and "." in value and client.get("/me").text == "alice"
    forged = app.test_client()
    forged.set_cookie("session", value.rsplit(".", 1)[0] + ".bad-signature")
    assert forged.get("/me").text == "None"


def test_signed_ids_survive_a_secret_key_rotation(make_app: AppFactory) -> None:
    """Flask 3.1's SECRET_KEY_FALLBACKS: cookies signed with the old key still verify,
    new ones are signed with the new key."""
    app, _ = make_app(SESSION_USE_SIGNER=True)
    client = logged_in(app, "alice")
    old_key = app.secret_key
    app.secret_key = app.config["SECRET_KEY"] = "rotated " + str(old_key)
    unverified = app.test_client()
    unverified.set_cookie("session", sid(client) or "")
    assert unverified.get("/me").text == "None"  # without the fallback: not ours
    app.config["SECRET_KEY_FALLBACKS"] = [old_key]
    assert client.get("/me").text == "alice"
    bob = logged_in(app, "bob")
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert bob.get("/me").text == "bob"  # signed with the new key


def test_session_transaction_in_the_test_client(make_app: AppFactory) -> None:
    app, _ = make_app()
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["user_id"] = "grace"
    assert client.get("/me").text == "grace"


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SESSION_KEY_PREFIX", "{sessions}:"),
        ("SESSION_KEY_PREFIX", 7),
        ("SESSION_TYPE", "filesystem"),
        ("SESSION_REDIS", "redis://elsewhere"),
        ("SESSION_SERIALIZATION_FORMAT", "pickle"),
        ("SESSION_ID_LENGTH", 8),
        ("SESSION_ID_LENGTH", 301),  # ids too long for the cookie check: never found again
        ("SESSION_PERMANENT", "maybe"),
        ("PERMANENT_SESSION_LIFETIME", 0),
        ("PERMANENT_SESSION_LIFETIME", datetime.timedelta(seconds=-5)),
        ("TIERED_CACHE_SESSIONS", "perhaps"),
    ],
)
def test_configuration_errors_name_the_key(redis_url: str, key: str, value: Any) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", TIERED_CACHE_REDIS_URL=redis_url, TIERED_CACHE_SESSIONS=True)
    app.config[key] = value
    with pytest.raises(ConfigurationError, match=key) as caught:
        TieredCache(app)
    assert caught.value.key == key
    state = app.extensions.get("tiered_cache")
    if state is not None:
        state.cache.close()


def test_the_signer_needs_a_secret_key(redis_url: str) -> None:
    app = Flask(__name__)
    app.config.update(TIERED_CACHE_REDIS_URL=redis_url, TIERED_CACHE_SESSIONS=True)
    app.config["SESSION_USE_SIGNER"] = True
    with pytest.raises(ConfigurationError, match="SESSION_USE_SIGNER"):
        TieredCache(app)
    assert "tiered_cache" not in app.extensions  # nothing half made, its cache closed


def test_flask_session_settings_keep_their_meaning(make_app: AppFactory, r: redis.Redis) -> None:
    app, _ = make_app(
        SESSION_KEY_PREFIX="shop:",
        SESSION_ID_LENGTH=16,
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(minutes=5),
    )
    client = app.test_client()
    [cookie] = set_cookies(client.post("/set/a/1"))
    assert cookie.startswith("sid=") and "Secure" in cookie and "SameSite=Strict" in cookie
    value = sid(client, "sid")
    assert value is not None and len(value) == 22
    assert 0 < r.ttl(f"shop:{value}") <= 300


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_what_could_not_be_read_back_is_refused_at_write(fmt: str) -> None:
    codec = Codec(fmt)
    for odd in (1, None):  # None too: msgpack writes it, and every read refused the map
        with pytest.raises(TypeError, match="session keys are strings"):
            codec.encode(Record({"cart": ["apples"], odd: "one"}))
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for bad in (object(), "\udc80", deep):  # no format, a lone surrogate, too deep
        with pytest.raises(TypeError, match="cannot be stored"):
            codec.encode(Record({"f": bad}))
    assert codec.decode(codec.encode(Record({"a": [1, "b"]}, 5.0, "u"))).data == {"a": [1, "b"]}
