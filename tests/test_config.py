"""Settings: precedence, parsing of environment strings, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
from typing import Any, get_type_hints

import pytest
import redis

from tiered_cache import Cache, ConfigurationError
from tiered_cache.config import CacheConfig, CacheSettings


def test_defaults_match_the_spec() -> None:
    config = CacheConfig.resolve({})
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert (config.prefix, config.version, config.default_timeout) == ("tc", 1, 300)
    assert (config.l1_backend, config.l1_max_items, config.l1_max_bytes) == ("lru", 10000, 67108864)
    assert (config.l1_ttl, config.l1_disconnected_ttl, config.serializer) == (60, 1, "json")
    assert (config.invalidation, config.fail_open, config.socket_timeout) == (True, True, 0.25)
    assert (config.breaker_failures, config.breaker_reset, config.ttl_jitter) == (5, 2.0, 0.1)


def test_the_keyword_type_lists_every_setting_with_its_type() -> None:
    """``Cache(**settings)`` is typed by CacheSettings: it must not drift from CacheConfig."""
    fields = {field.name for field in dataclasses.fields(CacheConfig)}
    hints = get_type_hints(CacheConfig)
    assert get_type_hints(CacheSettings) == {name: hints[name] for name in fields}


def test_keywords_beat_config_keys_which_beat_defaults() -> None:
    config = CacheConfig.resolve(
        {"prefix": "kw"}, {"TIERED_CACHE_PREFIX": "cfg", "TIERED_CACHE_VERSION": "7"}
    )
    assert config.prefix == "kw"
    assert config.version == 7


def test_environment_strings_are_parsed() -> None:
    config = CacheConfig.resolve(
        {},
        {
            "TIERED_CACHE_FAIL_OPEN": "false",
            "TIERED_CACHE_INVALIDATION": "0",
            "TIERED_CACHE_SOCKET_TIMEOUT": "0.5",
            "TIERED_CACHE_L1_MAX_ITEMS": " 12 ",
        },
    )
    assert config.fail_open is False
    assert config.invalidation is False
    assert config.socket_timeout == 0.5
    assert config.l1_max_items == 12


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("l1_backend", "memcached"),
        ("l1_max_items", -1),
        ("l1_max_bytes", "lots"),
        ("l1_ttl", 0),
        ("l1_disconnected_ttl", -1),
        ("ttl_jitter", 1.5),
        ("serializer", "yaml"),
        ("socket_timeout", float("nan")),
        ("breaker_failures", 0),
        ("breaker_reset", True),
        ("redis_url", "http://example.com"),
        ("redis_url", "redis://:notaport"),
        ("redis_url", "redis://host:99999999"),
        ("prefix", "a:b"),
        ("prefix", ""),
        ("version", -1),
        ("fail_open", "maybe"),
        ("default_timeout", -5),
        ("default_timeout", 1e16),  # Redis would refuse its PX on every write
        ("secret_key", ""),
        ("version", float("inf")),  # int(inf) raises OverflowError, not ValueError
        ("l1_max_bytes", 10**400),  # so does math.isfinite of an int this wide
        ("l1_max_items", 1.9),  # not quietly 1
        ("redis_url", "redis://host/abc"),  # redis-py would quietly use db 0
        ("redis_url", "unix://"),
        ("redis_url", "redis+sentinel://h1:26379,h2:notaport/mymaster"),
        ("redis_url", "redis+sentinel://h1:26379,h2:65536/mymaster"),
        ("redis_url", "redis+sentinel://h1:26379,h2:0/mymaster"),
        ("redis_url", "redis+sentinel://h1:26379,:26379/mymaster"),
        ("redis_url", "redis+sentinel://h1:26379,/mymaster"),
        ("redis_url", "redis+sentinel://h1:26379"),
        ("redis_url", "redis+sentinel://h1:26379/"),
        ("redis_url", "redis+sentinel://h1:26379/mymaster/x"),
        ("redis_url", "redis+sentinel://h1:26379/mymaster/0/1"),
        ("redis_url", "redis+sentinel://h1:26379/mymaster?db=x"),
        # Options that would be quietly left out: a plaintext connection, say.
        ("redis_url", "redis+sentinel://h1:26379/mymaster?ssl=true"),
        ("redis_url", "redis+cluster://h1:7000/5"),
        ("redis_url", "redis+cluster://h1:7000?ssl=true"),
        ("redis_url", "redis://host:0/0"),  # redis-py would quietly use 6379
        # redis-py refuses these only when it connects: a TypeError on every call.
        ("redis_url", "redis://localhost/0?sockettimeout=1"),
        ("redis_url", "unix:///tmp/redis.sock?foo=bar"),
        ("redis_url", "redis://h/0?decode_responses=true"),  # text where bytes are read
        # ...or refuses them then, as an error of its own (a ConnectionError, a RedisError).
        ("redis_url", "redis://h/0?protocol=5"),
        ("redis_url", "rediss://h/0?ssl_cert_reqs=bogus"),
        # Socket timeouts are TIERED_CACHE_SOCKET_TIMEOUT's: the URL's would override it,
        # and a negative one raises ValueError (no outage, a 500) on every call.
        ("redis_url", "redis://h/0?socket_timeout=3"),
        ("redis_url", "redis://h/0?socket_timeout=-1"),
        ("redis_url", "unix:///tmp/redis.sock?socket_connect_timeout=-1"),
        # Durations past a hundred years overflow the clock a socket waits on.
        ("socket_timeout", 1e10),
        ("breaker_reset", 1e12),
        ("l1_ttl", 1e10),
    ],
)
def test_bad_values_name_the_key_and_the_value(key: str, value: Any) -> None:
    config_key = "TIERED_CACHE_" + key.upper()
    with pytest.raises(ConfigurationError) as raised:
        CacheConfig.resolve({}, {config_key: value})
    assert raised.value.key == config_key
    assert config_key in str(raised.value)
    assert repr(value) in str(raised.value)
    with pytest.raises(ConfigurationError, match=config_key):
        Cache(**{key: value})


@pytest.mark.parametrize("option", ["socket_timeout", "socket_connect_timeout"])
def test_a_socket_timeout_in_the_url_points_at_the_setting(option: str) -> None:
    """redis-py lets a URL option override the keyword: one setting bounds a stalled Redis."""
    with pytest.raises(ConfigurationError, match=f"{option} .*TIERED_CACHE_SOCKET_TIMEOUT"):
        CacheConfig.resolve({}, {"TIERED_CACHE_REDIS_URL": f"redis://h/0?{option}=0.5"})


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h1:26379,h2:26379/mymaster",
        "redis+sentinel://:pw@h1:26379,h2:26380,h3/mymaster/2",
        "redis+sentinel://h1/mymaster",
        "redis+sentinel://h1/mymaster?db=",  # database 0
        "redis+sentinel://h1/mymaster?db=3",
        "redis+sentinel://:pw@h1,h2/mymaster@dc1",  # an "@" in a service name is no password's
    ],
)
def test_sentinel_urls_may_name_several_sentinels(url: str) -> None:
    """The README's ``host:port[,host:port]``: urlsplit alone reads "26379,h2:26379" as a port."""
    assert CacheConfig.resolve({}, {"TIERED_CACHE_REDIS_URL": url}).redis_url == url
    Cache(redis_url=url, invalidation=False).close()  # the client is made, Redis untouched


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="l1_max_itmes"):
        Cache(l1_max_itmes=5)  # type: ignore[call-arg]


def test_pickle_needs_a_secret_and_msgpack_is_available() -> None:
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_SECRET_KEY"):
        Cache(serializer="pickle")
    Cache(serializer="pickle", secret_key="s3cret", invalidation=False).close()
    Cache(serializer="msgpack", invalidation=False).close()


def test_construction_does_not_touch_redis() -> None:
    """A listening socket that would see any connection: making the cache opens none."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        cache = Cache(redis_url=f"redis://127.0.0.1:{port}/0")
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
        cache.close()


def test_the_core_never_imports_flask() -> None:
    code = (
        "import sys, tiered_cache; from tiered_cache import Cache, MISS; "
        "Cache(invalidation=False).close(); "
        "assert not any(m == 'flask' or m.startswith('flask.') for m in sys.modules), 'flask'; "
        "from tiered_cache import TieredCache; assert 'flask' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_client_that_decodes_replies_is_refused(redis_url: str) -> None:
    """Its replies come back as text (and framed values fail to decode inside redis-py,
    before any of our error handling): refused where it is given, not on every read."""
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        Cache(redis=decoding)
    decoding.close()
    client = redis.Redis.from_url(redis_url)
    cache = Cache(redis=client)
    try:
        cache.set("k", "v")
        assert cache.get("k") == "v"
    finally:
        cache.close()
        client.close()  # the caller's client: the cache leaves it open


@pytest.mark.parametrize(
    ("key", "value", "secret"),
    [
        ("TIERED_CACHE_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/abc", "hunter2"),
        ("TIERED_CACHE_REDIS_URL", "redis://h/abc?password=hunter2", "hunter2"),
        ("TIERED_CACHE_REDIS_URL", "redis+cluster://u:hunter2@h:7000/5", "hunter2"),
        ("TIERED_CACHE_REDIS_URL", b"redis://:hunter2@h:6379/0", "hunter2"),  # not a str
        ("TIERED_CACHE_ENDPOINTS_TOKEN", "hunter2 secret!", "hunter2"),
        # A '#', '/' or '?' left unencoded in a password ends urlsplit's netloc inside it.
        ("TIERED_CACHE_REDIS_URL", "redis://:Sup3r#Secret@cache.internal:6380/0", "Sup3r#Secret"),
        ("TIERED_CACHE_REDIS_URL", "redis://admin:Sup3r/Secret@cache:6380/0", "Sup3r/Secret"),
        ("TIERED_CACHE_REDIS_URL", "redis://:Sup3r?Secret@cache.internal:6380/0", "Sup3r?Secret"),
        ("TIERED_CACHE_REDIS_URL", "redis+sentinel://:Sup3r#Secret@s1:26379/m", "Sup3r#Secret"),
        ("TIERED_CACHE_REDIS_URL", "redis+sentinel://:Sup3r/Secret@s1:26379/m", "Sup3r/Secret"),
        ("TIERED_CACHE_REDIS_URL", "redis://h/abc?password=hun@ter2", "hun@ter2"),
        # A secret that is no string: never printed by repr.
        ("TIERED_CACHE_SECRET_KEY", ["0ld-Secret-key", "n3w-Secret-key"], "Secret-key"),
        ("TIERED_CACHE_ENDPOINTS_TOKEN", 84729174623, "84729174623"),
    ],
)
def test_a_bad_value_names_its_key_but_not_its_secret(key: str, value: Any, secret: str) -> None:
    """Error messages reach logs and tracebacks: the URL is printed without its userinfo
    (as the CLI prints it), a secret by its length, or its type when it is no string."""
    from tiered_cache.config import ExtensionConfig

    with pytest.raises(ConfigurationError) as raised:
        ExtensionConfig.resolve({}, {key: value})
    assert raised.value.key == key
    assert key in str(raised.value)
    for part in re.split("[#/?@]", secret):  # no part of it either
        assert part not in str(raised.value)
    assert raised.value.value == value  # the exception still holds it, for the caller
