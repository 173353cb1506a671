"""The extension contract: settings at init_app, per-app state, lazy binding to the current app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.flask_apps import close_app
from tiered_cache import MISS, ConfigurationError, TieredCache

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(redis_url: str) -> Iterator[MakeApp]:
    """Apps on the shared test Redis; their caches are closed afterwards."""
    made: list[Flask] = []

    def make(tc: TieredCache | None = None, **config: Any) -> Flask:
        app = Flask(f"app{len(made)}")
        app.config.update(TIERED_CACHE_REDIS_URL=redis_url, **config)
        (tc or TieredCache()).init_app(app)
        made.append(app)
        return app

    yield make
    for app in made:
        close_app(app)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TIERED_CACHE_L1_BACKEND", "memcached"),
        ("TIERED_CACHE_L1_MAX_BYTES", -1),
        ("TIERED_CACHE_REDIS_URL", "http://nope"),
        ("TIERED_CACHE_RATELIMIT_DEFAULT", "many/second"),
        ("TIERED_CACHE_RATELIMIT_STRATEGY", "token-bucket"),
        ("TIERED_CACHE_SESSIONS", "perhaps"),
        ("TIERED_CACHE_ENDPOINTS_TOKEN", ""),
        ("TIERED_CACHE_ENDPOINTS_TOKEN", "key=value"),  # never sent whole as a bearer token
        ("TIERED_CACHE_SOCKET_TIMEOUT", "0"),
        ("TIERED_CACHE_ENDPOINT_TOKEN", "s3cret"),  # a typo: the endpoints would be open
    ],
)
def test_bad_settings_fail_at_init_app_naming_the_key(key: str, value: Any) -> None:
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(ConfigurationError) as raised:
        TieredCache().init_app(app)
    assert raised.value.key == key and raised.value.value == value
    if "TOKEN" in key and value:  # a secret, even misspelt: named by its length only
        assert repr(value) not in str(raised.value)
        assert f"<{len(value)} characters, not shown>" in str(raised.value)
    else:
        assert repr(value) in str(raised.value)
    assert "tiered_cache" not in app.extensions


def test_a_misspelt_key_is_named_with_the_likely_one() -> None:
    app = Flask(__name__)
    app.config["TIERED_CACHE_L1_MAX_ITMES"] = 5
    with pytest.raises(ConfigurationError, match="did you mean TIERED_CACHE_L1_MAX_ITEMS"):
        TieredCache().init_app(app)


def test_keywords_beat_app_config(make_app: MakeApp) -> None:
    app = make_app(TieredCache(prefix="from-keyword"), TIERED_CACHE_PREFIX="from-config")
    assert TieredCache.state(app).cache.config.prefix == "from-keyword"
    with pytest.raises(ConfigurationError, match="prefx"):
        TieredCache(prefx="typo").init_app(Flask(__name__))


def test_one_extension_serves_several_apps_each_with_its_own_cache(make_app: MakeApp) -> None:
    tc = TieredCache()
    calls: list[int] = []

    @tc.memoize(timeout=60)  # decorated before any init_app
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    first = make_app(tc, TIERED_CACHE_PREFIX="one")
    second = make_app(tc, TIERED_CACHE_PREFIX="two")
    assert TieredCache.state(first).cache is not TieredCache.state(second).cache
    with first.app_context():
        tc.set("k", "first")
        assert square(3) == 9
        assert square(3) == 9
    with second.app_context():
        assert tc.get("k") is None  # another prefix: another cache
        assert square(3) == 9  # computed again for this app's cache
    assert calls == [3, 3]
    with first.app_context():
        assert tc.get("k") == "first"
        tc.delete_memoized(square)
        assert square(3) == 9
    assert calls == [3, 3, 3]


@pytest.mark.parametrize("timeout", [-1, float("nan"), 1e16])
def test_memoize_refuses_a_bad_timeout_where_it_is_written(timeout: float) -> None:
    """As cached() does: not on the first call, after the function ran for nothing."""
    with pytest.raises(ValueError, match=r"memoize\(timeout=\.\.\.\)"):
        TieredCache().memoize(timeout=timeout)


def test_initialising_twice_or_using_it_outside_an_app_fails_clearly(make_app: MakeApp) -> None:
    tc = TieredCache()
    app = make_app(tc)
    with pytest.raises(RuntimeError, match="already initialised"):
        tc.init_app(app)
    with pytest.raises(RuntimeError, match="application context"):
        tc.get("k")
    with Flask(__name__).app_context(), pytest.raises(RuntimeError, match="init_app"):
        tc.get("k")


def test_cache_methods_act_on_the_current_app(make_app: MakeApp) -> None:
    tc = TieredCache()
    app = make_app(tc)
    with app.app_context():
        assert tc.set("a", 1)
        assert tc.add("b", 2)
        assert tc.get_many("a", "b", "c") == [1, 2, None]
        assert tc.set_many({"c": 3})
        assert tc.has("c")
        assert tc.incr("n", 2) == 2
        assert tc.get_or_set("d", lambda: 4) == 4
        tc.namespace("ns").set("x", 1)
        assert tc.invalidate_namespace("ns") > 0
        assert tc.delete("a", "b") == 2
        with tc.lock("job", timeout=5):
            assert tc.stats()["l1_items"] >= 1
        assert tc.clear() >= 2


def test_pickle_signs_with_the_app_secret_key(make_app: MakeApp) -> None:
    app = make_app(TIERED_CACHE_SERIALIZER="pickle", SECRET_KEY="s3cret")
    with app.app_context():
        TieredCache.state(app).cache.set("k", {1, 2})
        assert TieredCache.state(app).cache.get("k") == {1, 2}
    # Another app on the same Redis reads the value only when it signs with that key.
    other = make_app(TIERED_CACHE_SERIALIZER="pickle", SECRET_KEY="another")
    assert TieredCache.state(other).cache.get("k", MISS) is MISS
    same = make_app(
        TIERED_CACHE_SERIALIZER="pickle", SECRET_KEY="another", TIERED_CACHE_SECRET_KEY="s3cret"
    )
    assert TieredCache.state(same).cache.get("k") == {1, 2}
    app = Flask(__name__)
    app.config["TIERED_CACHE_SERIALIZER"] = "pickle"
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_SECRET_KEY"):
        TieredCache().init_app(app)
