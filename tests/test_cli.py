"""``flask tiered-cache ...`` through Flask's CLI runner, against real Redis servers."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from click.testing import Result
from flask import Flask

from tests.flask_apps import close_app
from tests.redis_harness import RedisServer
from tiered_cache.cli import redacted
from tiered_cache.endpoints import publisher_of
from tiered_cache.flask_ext import TieredCache

MakeApp = Callable[..., Flask]


@pytest.fixture
def app_factory() -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def make(url: str, name: str = "app", **config: Any) -> Flask:
        app = Flask(name)
        app.config.update(TIERED_CACHE_REDIS_URL=url, **config)
        tc = TieredCache(app)

        @app.get("/")
        def index() -> str:
            return str(tc.get("x"))

        made.append(app)
        return app

    yield make
    for app in made:
        close_app(app)


@pytest.fixture
def make_app(app_factory: Callable[..., Flask], redis_url: str) -> MakeApp:
    return lambda **config: app_factory(redis_url, **config)


def run(app: Flask, *args: str, **kwargs: Any) -> Result:
    return app.test_cli_runner().invoke(args=["tiered-cache", *args], **kwargs)


def plain(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


# -- stats ----------------------------------------------------------------------------


def test_stats_table_shows_every_worker(make_app: MakeApp) -> None:
    first, second = make_app(), make_app(name="second")
    for app in (first, second):
        app.test_client().get("/")  # starts its publisher, whose thread publishes soon
        assert publisher_of(TieredCache.state(app)).publish()  # type: ignore[union-attr]
    cli_app = make_app(name="cli")
    result = run(cli_app, "stats")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["host", "pid", "app", "age"]
    rows = [
        line.split()
        for line in lines[1:]
        if re.match(r"\S+\s+\d+\*?\s", line) and not line.startswith("total")
    ]
    assert {row[2] for row in rows} == {"app", "second", "cli"}
    assert [row[1] for row in rows if row[2] == "cli"] == [f"{os.getpid()}*"]
    assert any(line.startswith("total") and "3 workers" in line for line in lines)


def test_stats_json(make_app: MakeApp) -> None:
    worker = make_app()
    worker.test_client().get("/")
    worker.test_client().get("/")
    publisher_of(TieredCache.state(worker)).publish()  # type: ignore[union-attr]
    result = run(make_app(name="cli"), "stats", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["complete"] is True
    assert {w["app"] for w in body["workers"]} == {"app", "cli"}
    published = next(w for w in body["workers"] if w["app"] == "app")
    assert published["stats"]["misses"] == 2
    assert body["totals"]["workers"] == 2
    assert body["totals"]["misses"] == 2


def test_stats_never_publishes_the_cli_process(make_app: MakeApp, redis_url: str) -> None:
    cli_app = make_app(name="cli")
    assert run(cli_app, "stats").exit_code == 0
    assert run(cli_app, "stats").exit_code == 0
    index = TieredCache.state(cli_app).cache.layout.stats_index
    assert plain(redis_url).smembers(index) == set()  # no worker, and the CLI is none


def test_stats_with_redis_down_fails_but_shows_this_process(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    app = app_factory(redis_server.url)
    redis_server.kill()
    result = run(app, "stats")
    assert result.exit_code == 1
    assert f"{os.getpid()}*" in result.output
    assert "cannot read the workers' figures" in result.output
    assert "is unavailable" in result.output


# -- clear, invalidate, delete ---------------------------------------------------------


def test_clear_asks_first(make_app: MakeApp, redis_url: str) -> None:
    app = make_app()
    with app.app_context():
        TieredCache.state().cache.set_many({"a": 1, "b": 2, "c": 3})
    result = run(app, "clear", input="n\n")
    assert result.exit_code == 1
    assert "Aborted" in result.output
    client = plain(redis_url)
    try:
        assert len(list(client.scan_iter("tc:1:*"))) == 3
        result = run(app, "clear", input="y\n")
        assert result.exit_code == 0, result.output
        assert "Deleted 3 keys" in result.output
        assert list(client.scan_iter("tc:1:*")) == []
    finally:
        client.close()


def test_clear_yes_skips_the_prompt(make_app: MakeApp) -> None:
    app = make_app()
    with app.app_context():
        TieredCache.state().cache.set("a", 1)
    result = run(app, "clear", "--yes")
    assert result.exit_code == 0, result.output
    assert "?" not in result.output
    assert "Deleted 1 keys" in result.output


def test_clear_with_redis_down_fails(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    app = app_factory(redis_server.url)
    redis_server.kill()
    result = run(app, "clear", "--yes")
    assert result.exit_code == 1
    assert "unavailable" in result.output
    assert redacted(redis_server.url) in result.output


def test_invalidate_prints_the_new_version(make_app: MakeApp) -> None:
    app = make_app()
    with app.app_context():
        products = TieredCache.state().cache.namespace("products")
        products.set("p1", "old")
    result = run(app, "invalidate", "products")
    assert result.exit_code == 0, result.output
    first = int(re.search(r"version (\d+)", result.output).group(1))  # type: ignore[union-attr]
    assert f"version {first + 1}" in run(app, "invalidate", "products").output
    with app.app_context():
        assert products.get("p1") is None


def test_delete_prints_how_many(make_app: MakeApp) -> None:
    app = make_app()
    with app.app_context():
        cache = TieredCache.state().cache
        cache.set_many({"a": 1, "b": 2})
        cache.namespace("ns").set("a", 3)
    result = run(app, "delete", "a", "b", "missing")
    assert result.exit_code == 0, result.output
    assert "Deleted 2 of 3 keys" in result.output
    assert "Deleted 0 of 1 keys" in run(app, "delete", "a").output
    assert "Deleted 1 of 1 keys" in run(app, "delete", "--namespace", "ns", "a").output
    assert run(app, "delete").exit_code == 2  # a key is required


def test_delete_with_redis_down_fails(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    app = app_factory(redis_server.url)
    redis_server.kill()
    result = run(app, "delete", "a")
    assert result.exit_code == 1
    assert "unavailable" in result.output


def no_traceback(result: Result, exit_code: int, message: str) -> None:
    """A clean click error: its exit code and message, no exception escaping the command."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args", [("invalidate", ""), ("delete", "-n", "", "k"), ("delete", "--namespace=", "k")]
)
def test_an_empty_namespace_is_a_usage_error(make_app: MakeApp, args: tuple[str, ...]) -> None:
    result = run(make_app(), *args)
    no_traceback(result, 2, "a namespace name is a non-empty string")


def test_an_error_reply_is_a_command_error(app_factory: MakeApp, redis_server: RedisServer) -> None:
    """Not an outage (the cache does not fail open on it), yet no traceback either: an
    ACL user that may not INCRBY."""
    with redis_server.client() as client:
        client.acl_setuser(
            "no-incr", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
            commands=["+@all", "-incrby"],
        )  # fmt: skip
    try:
        app = app_factory(f"redis://no-incr:pw@{redis_server.host}:{redis_server.port}/0")
        result = run(app, "invalidate", "products")
        no_traceback(result, 1, "invalidate failed: NoPermissionError")
        assert "incrby" in result.output.lower()
    finally:
        with redis_server.client() as client:
            client.acl_deluser("no-incr")


def test_redacted_hides_the_userinfo() -> None:
    assert redacted("redis://user:pw@h:1/0") == "redis://***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
    assert redacted("unix:///run/redis.sock") == "unix:///run/redis.sock"


def test_redacted_hides_passwords_in_the_query() -> None:
    """redis-py reads ``password``, ``sentinel_password``... from the query too."""
    assert redacted("unix:///run/redis.sock?password=s3cret&db=2") == (
        "unix:///run/redis.sock?password=***&db=2"
    )
    assert redacted("redis://u:pw@h:1/0?Sentinel_PASSWORD=a&pass%77ord=b&x=1&flag") == (
        "redis://***@h:1/0?Sentinel_PASSWORD=***&pass%77ord=***&x=1&flag"
    )


@pytest.mark.parametrize("char", ["#", "/", "?", "@"])
def test_redacted_hides_a_password_urlsplit_reads_only_in_part(char: str) -> None:
    """Unencoded, these end urlsplit's netloc (or its userinfo) inside the password:
    everything up to the last "@" is hidden."""
    url = f"redis://admin:Sup3r{char}Secret@cache.internal:6380/0"
    assert redacted(url) == "redis://***@cache.internal:6380/0"
    sentinel = f"redis+sentinel://:Sup3r{char}Secret@s1:26379,s2/mymaster"
    assert redacted(sentinel) == "redis+sentinel://***@s1:26379,s2/mymaster"


def test_redacted_hides_more_rather_than_less() -> None:
    """The netloc's userinfo alone when no "@" follows the netloc; else all before the
    last "@": a password holding '?' and '=' ends the netloc and puts its "@" in a query
    value, and urlsplit drops tabs, which shifted the offsets (both printed passwords)."""
    assert redacted("redis://u:pw@h:6380/0?db=1") == "redis://***@h:6380/0?db=1"
    assert redacted("redis://:hunter?2=x@cache:6379/0") == "redis://***@cache:6379/0"
    assert redacted("redis://app:s\tec\tret@cache:6379/0") == "redis://***@cache:6379/0"
    assert redacted("redis://h:1/0?password=p@ss&db=1") == "redis://***&db=1"
    assert redacted("redis://h:1/0?client_name=me@x") == "redis://***@x"
    assert redacted("unix:///run/redis@6380/redis.sock") == "unix://***@6380/redis.sock"
    assert redacted("redis://:pw@[::1") == "redis://***@[::1"  # not a URL urlsplit reads


SECRET = "s3cret-in-the-query"


@pytest.fixture
def socket_server() -> Iterator[tuple[RedisServer, str]]:
    """A server that also listens on a unix socket (a short path: sun_path has 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tc-") as directory:
        path = os.path.join(directory, "redis.sock")
        with RedisServer(extra_args=("--unixsocket", path)) as server:
            yield server, path


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_doctor_never_prints_a_password_given_in_the_query(
    app_factory: Callable[..., Flask], socket_server: tuple[RedisServer, str], transport: str
) -> None:
    server, path = socket_server
    with server.client() as admin:
        admin.config_set("requirepass", SECRET)
    base = f"redis://{server.host}:{server.port}/0" if transport == "tcp" else f"unix://{path}"
    app = app_factory(f"{base}?password={SECRET}")
    result = run(app, "doctor")
    assert result.exit_code == 0, result.output  # the password is used: AUTH succeeded
    assert f"Redis: {base}?password=***" in result.output
    assert SECRET not in result.output


def test_command_errors_never_print_a_password_given_in_the_query(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    app = app_factory(f"{redis_server.url}?password={SECRET}")
    redis_server.kill()
    for args in (("clear", "--yes"), ("stats",), ("delete", "k"), ("invalidate", "ns")):
        result = run(app, *args)
        assert result.exit_code == 1
        assert "password=***" in result.output
        assert SECRET not in result.output


# -- doctor ---------------------------------------------------------------------------


def lines_of(result: Result) -> dict[str, str]:
    """Each check's name (first word after the status) -> its whole line."""
    found = {}
    for line in result.output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in {"OK", "INFO", "WARN", "FAIL"}:
            found[parts[1]] = line
    return found


def test_doctor_all_good(app_factory: Callable[..., Flask], redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.config_set("maxmemory", "100mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    result = run(app_factory(redis_server.url), "doctor")
    assert result.exit_code == 0, result.output
    checks = lines_of(result)
    assert not [line for line in checks.values() if line.startswith(("WARN", "FAIL"))]
    assert checks["reachable"].startswith("OK")
    assert re.search(r"min [\d.]+ ms, median [\d.]+ ms, max [\d.]+ ms", checks["latency"])
    assert checks["version"].startswith("OK")
    assert "104857600" in checks["maxmemory"]
    assert "allkeys-lru" in checks["maxmemory-policy"]
    assert checks["role"].startswith("OK")
    assert checks["pub/sub"].startswith("OK")
    assert checks["persistence"].startswith("INFO")  # sessions off: not needed
    assert "0 failed, 0 warnings" in result.output


def test_doctor_fails_pubsub_when_an_acl_keeps_the_bus_from_subscribing(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    """Each worker's bus subscribes to the bus channel and one of its own: an ACL that
    does not grant both (`{prefix}:*` does) keeps every bus from subscribing, and
    doctor, which subscribes the same way, says so."""
    grants = {
        "busonly": ("&tc:1:#bus", "&tc:1:#doctor:*"),
        "ownonly": ("&tc:1:#bus:*",),
        "prefix": ("&tc:*",),
    }
    with redis_server.client() as admin:
        for user, channels in grants.items():
            admin.execute_command(
                "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "resetchannels", *channels
            )
    for user, status in (("busonly", "FAIL"), ("ownonly", "FAIL"), ("prefix", "OK")):
        url = redis_server.url.replace("redis://", f"redis://{user}:pw@")
        checks = lines_of(run(app_factory(url), "doctor"))
        assert checks["pub/sub"].startswith(status), (user, checks["pub/sub"])


def test_doctor_warns_on_noeviction_and_unbounded_memory(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    client = redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.close()
    result = run(app_factory(redis_server.url), "doctor")
    assert result.exit_code == 0, result.output  # warnings do not fail
    checks = lines_of(result)
    assert checks["maxmemory-policy"].startswith("WARN")
    assert "noeviction" in checks["maxmemory-policy"]
    assert "allkeys-lru" in checks["maxmemory-policy"]
    assert checks["maxmemory"].startswith("WARN")
    assert "unbounded" in checks["maxmemory"]


def test_doctor_warns_on_sessions_without_persistence(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    app = app_factory(redis_server.url, TIERED_CACHE_SESSIONS=True)
    result = run(app, "doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result)["persistence"].startswith("WARN")
    assert "neither RDB nor AOF" in result.output
    client = redis_server.client()
    client.config_set("save", "3600 1")
    client.close()
    result = run(app, "doctor")
    assert lines_of(result)["persistence"].startswith("OK")
    assert "RDB save 3600 1, AOF off" in result.output


def test_doctor_fails_when_redis_is_down(
    app_factory: Callable[..., Flask], redis_server: RedisServer
) -> None:
    app = app_factory(redis_server.url)
    redis_server.kill()
    result = run(app, "doctor")
    assert result.exit_code == 1
    assert lines_of(result)["reachable"].startswith("FAIL")
    assert "1 failed" in result.output


def test_doctor_without_config_get_reads_info() -> None:
    with RedisServer(extra_args=("--rename-command", "CONFIG", "")) as server:
        app = Flask("managed")
        app.config.update(TIERED_CACHE_REDIS_URL=server.url, TIERED_CACHE_SESSIONS=True)
        TieredCache(app)
        try:
            result = run(app, "doctor")
        finally:
            TieredCache.state(app).cache.close()
    assert result.exit_code == 0, result.output
    checks = lines_of(result)
    assert "INFO (CONFIG GET refused)" in checks["maxmemory"]
    assert checks["maxmemory-policy"]
    assert checks["persistence"].startswith("WARN")
    assert "cannot read" in checks["persistence"]


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "1e10"])
def test_doctor_timeout_must_be_positive_and_bounded(make_app: MakeApp, timeout: str) -> None:
    """1e10 s overflows the clock a socket waits on: a traceback from settimeout."""
    result = run(make_app(), "doctor", "--timeout", timeout)
    no_traceback(result, 2, "Invalid value for '--timeout'")
    assert "> 0 and at most" in result.output or "finite number of seconds" in result.output


@pytest.mark.parametrize("pings", ["0", "-3", "many"])
def test_doctor_needs_at_least_one_ping(make_app: MakeApp, pings: str) -> None:
    result = run(make_app(), "doctor", "--pings", pings)
    no_traceback(result, 2, "Invalid value for '--pings'")


def test_doctor_fails_when_pubsub_does_not_work() -> None:
    with RedisServer(extra_args=("--rename-command", "PUBLISH", "")) as server:
        app = Flask("nopubsub")
        app.config.update(TIERED_CACHE_REDIS_URL=server.url)
        TieredCache(app)
        try:
            result = run(app, "doctor")
        finally:
            TieredCache.state(app).cache.close()
    assert result.exit_code == 1
    assert lines_of(result)["pub/sub"].startswith("FAIL")
