"""Every setting of the core engine, declared once: name, default, parser.

A setting is known by its keyword (``l1_max_items``) in :class:`~tiered_cache.Cache`
and by its configuration key (``TIERED_CACHE_L1_MAX_ITEMS``) in ``app.config`` and in
the environment. Values may be given as strings (environment variables), and a bad
value raises :class:`~tiered_cache.ConfigurationError` naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict, TypeVar
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import redis

from ._durations import checked_seconds
from ._redaction import at_past_host
from .errors import ConfigurationError
from .ratelimit.limits import STRATEGIES, check_strategy, parse_limits

KEY_PREFIX = "TIERED_CACHE_"
URL_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
L1_BACKENDS = ("lru", "cachetools")
SERIALIZERS = ("json", "msgpack", "pickle")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _bool(value: Any) -> bool:
    """Parse a boolean, accepting the usual environment spellings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected a boolean")


def _number(value: Any, kind: type[int] | type[float]) -> float:
    """Parse a finite number of ``kind`` (bools are refused, they are a typo here)."""
    if isinstance(value, bool):
        raise ValueError(f"expected {kind.__name__}, got a boolean")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError("expected a whole number")  # int(1.9) would quietly make it 1
    try:
        number = kind(value.strip() if isinstance(value, str) else value)
        finite = math.isfinite(number)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), float(10**400)
        raise ValueError(f"expected a finite {kind.__name__}") from None
    if not finite:
        raise ValueError("expected a finite number")
    return number


def _non_negative_int(value: Any) -> int:
    number = int(_number(value, int))
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _positive_int(value: Any) -> int:
    number = int(_number(value, int))
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _timeout(value: Any) -> float:
    """A write's lifetime, bounded as every duration handed to Redis (0: no expiry)."""
    return checked_seconds("a timeout (0 = no expiry)", _number(value, float))


def _positive_seconds(value: Any) -> float:
    """A duration above 0, bounded as every duration is (a socket timeout past it
    overflows the clock the socket waits on, and each call would raise)."""
    return checked_seconds("a duration", _number(value, float), zero=False)


def _fraction(value: Any) -> float:
    number = float(_number(value, float))
    if not 0 <= number < 1:
        raise ValueError("must be in [0, 1)")
    return number


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)

    return parse


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in ":{}# \t\r\n"):
        raise ValueError("expected a non-empty string without ':', '{', '}', '#' or spaces")
    return value


def _redis_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a URL string")
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(URL_SCHEMES)}")
    _refuse_split_userinfo(parts)
    if parts.scheme == "redis+sentinel":
        _sentinel_addresses(parts.netloc)
        _sentinel_path(parts.path, parts.query)
        return value
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("no host in the URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("bad port in the URL") from None
    if port == 0:  # redis-py would quietly use 6379
        raise ValueError("bad port in the URL")
    if parts.scheme == "redis+cluster":
        if not _CLUSTER_PATH.fullmatch(parts.path) or parts.query:
            # redis_tier reads host, port and userinfo alone: an option ignored there
            # (?ssl=true, ?password=) would quietly connect without it.
            raise ValueError(
                "a redis+cluster URL is redis+cluster://[user:password@]host:port, without "
                "a database (a cluster has only 0) or query options"
            )
        return value
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("no socket path in the URL")
    if parts.scheme in ("redis", "rediss") and not _DB_PATH.fullmatch(parts.path):
        raise ValueError("the path must be a database number, /0 to /15 say")
    _check_options(value)
    return value


def _refuse_split_userinfo(parts: SplitResult) -> None:
    """Refuse an "@" that urlsplit reads past the host: a '/', '?' or '#' left unencoded
    in a password ends the netloc inside it, and the rest would be read as a path, a
    query or a fragment (an "@" in a query value is fine; a unix socket path, or a
    sentinel service name, may hold one: their reasons quote no address, see
    :func:`_sentinel_addresses`)."""
    if at_past_host(parts, in_path=parts.scheme not in ("unix", "redis+sentinel")):
        raise ValueError(
            "an '@' after the host: a '/', '?' or '#' in the user name or password must be "
            "percent-encoded (%2F, %3F, %23)"
        )


def _check_options(url: str) -> None:
    """Refuse at init_app the query options redis-py would refuse only when it connects
    (an unknown one is a TypeError on every call; ?protocol=5 a ConnectionError), and
    socket timeouts: from_url lets them override TIERED_CACHE_SOCKET_TIMEOUT, so a URL's
    ?socket_timeout=3 would hold every request 3 s on a stalled Redis (and a negative one
    raises on every call). One setting says it: TIERED_CACHE_SOCKET_TIMEOUT."""
    try:  # an unconnected connection: its __init__ checks what the URL gives it
        pool = redis.ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, redis.RedisError) as exc:
        raise ValueError(f"redis-py refuses its options: {exc}") from None
    kwargs = pool.connection_kwargs
    timeouts = sorted(_URL_TIMEOUTS & set(kwargs))
    if timeouts:
        raise ValueError(
            f"{timeouts[0]} in the URL would override TIERED_CACHE_SOCKET_TIMEOUT: set that instead"
        )
    if kwargs.get("decode_responses"):
        raise ValueError("decode_responses hands back text where the cache reads bytes")


_URL_TIMEOUTS: Final = frozenset({"socket_timeout", "socket_connect_timeout"})


_DB_PATH = re.compile(r"/?|/[0-9]+/?")
_CLUSTER_PATH = re.compile(r"/?|/0/?")
_PORT = re.compile(r"[0-9]{1,5}")


def _sentinel_addresses(netloc: str) -> None:
    """Check each ``host[:port]`` of a ``redis+sentinel`` URL (no port means 26379)."""
    # Split as redis_tier._sentinel_client splits; urlsplit reads "26379,h2:26379" as a port.
    # The addresses are not quoted: cut short by a password holding an unencoded '/',
    # one would be part of that password.
    encode = "(a '/' in a password must be percent-encoded: %2F)"
    for number, address in enumerate(unquote(netloc.rpartition("@")[2]).split(","), 1):
        host, colon, port = address.partition(":")
        if not host:
            raise ValueError(f"no host in sentinel address number {number} {encode}")
        if colon and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
            raise ValueError(f"bad port in sentinel address number {number} {encode}")


def _sentinel_path(path: str, query: str) -> None:
    """Check the ``/service[/db]`` (or ``?db=``) of a ``redis+sentinel`` URL, read as
    redis_tier._sentinel_client reads it."""
    names = [name for name in path.split("/") if name]
    if not names:
        raise ValueError("no service name in the URL: redis+sentinel://host:port/service")
    options = parse_qs(query, keep_blank_values=True)
    dbs = names[1:] or [db for db in options.get("db", []) if db]  # ?db= is database 0
    if len(names) > 2 or not all(_DB.fullmatch(db) for db in dbs):
        raise ValueError("after the service name, only a database number: /service/0")
    if set(options) - {"db"}:
        # redis_tier reads ?db= alone: any other option would be quietly left out.
        raise ValueError("a redis+sentinel URL takes no query option but ?db=")


_DB = re.compile(r"[0-9]+")


def _secret(value: Any) -> str | bytes | None:
    if value is None or (isinstance(value, str | bytes) and value):
        return value
    raise ValueError("expected a non-empty string or bytes")


_C = TypeVar("_C")


def _setting(default: Any, parse: Callable[[Any], Any], doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"parse": parse, "doc": doc})


@dataclasses.dataclass(frozen=True, slots=True)
class CacheConfig:
    """The validated settings of one :class:`~tiered_cache.Cache`."""

    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        _redis_url,
        "redis://, rediss://, unix://, redis+sentinel://host:port/service, "
        "redis+cluster://host:port",
    )
    prefix: str = _setting("tc", _prefix, "first part of every Redis key and the bus channel")
    version: int = _setting(1, _non_negative_int, "schema version in every key")
    default_timeout: float = _setting(300, _timeout, "seconds; 0 = no expiry")
    ttl_jitter: float = _setting(0.1, _fraction, "fraction of the TTL taken off at random")
    l1_backend: str = _setting("lru", _one_of(L1_BACKENDS), "hand-written LRU or cachetools")
    l1_max_items: int = _setting(10_000, _non_negative_int, "0 disables L1")
    l1_max_bytes: int = _setting(
        64 * 1024 * 1024, _non_negative_int, "approximate: what entries hold, decoded"
    )
    l1_ttl: float = _setting(60.0, _positive_seconds, "no L1 entry is older than this")
    l1_disconnected_ttl: float = _setting(
        1.0, _positive_seconds, "cap on L1 age while the bus is down"
    )
    serializer: str = _setting("json", _one_of(SERIALIZERS), "json, msgpack or signed pickle")
    secret_key: str | bytes | None = _setting(None, _secret, "HMAC key for pickle")
    invalidation: bool = _setting(True, _bool, "the pub/sub invalidation bus")
    fail_open: bool = _setting(True, _bool, "Redis errors are misses, not exceptions")
    socket_timeout: float = _setting(0.25, _positive_seconds, "seconds, for cache traffic")
    breaker_failures: int = _setting(5, _positive_int, "consecutive failures that open it")
    breaker_reset: float = _setting(2.0, _positive_seconds, "seconds the breaker stays open")

    @classmethod
    def resolve(
        cls, overrides: Mapping[str, Any], config: Mapping[str, Any] | None = None
    ) -> CacheConfig:
        """Build from keyword overrides, then ``TIERED_CACHE_*`` keys, then defaults.

        :param overrides: lower-case keywords (``l1_max_items=...``); they win.
        :param config: a mapping of ``TIERED_CACHE_*`` keys (``app.config``, ``os.environ``).
        :returns: the validated configuration.
        :raises ConfigurationError: naming the first bad key (or unknown keyword) and value.
        """
        unknown = sorted(set(overrides) - field_names(cls))
        if unknown:
            raise ConfigurationError(unknown[0], overrides[unknown[0]], "unknown setting")
        return _resolve(cls, overrides, config)


class CacheSettings(TypedDict, total=False):
    """The keyword arguments of :class:`~tiered_cache.Cache`: :class:`CacheConfig`'s fields."""

    redis_url: str
    prefix: str
    version: int
    default_timeout: float
    ttl_jitter: float
    l1_backend: str
    l1_max_items: int
    l1_max_bytes: int
    l1_ttl: float
    l1_disconnected_ttl: float
    serializer: str
    secret_key: str | bytes | None
    invalidation: bool
    fail_open: bool
    socket_timeout: float
    breaker_failures: int
    breaker_reset: float


def field_names(cls: type[Any]) -> set[str]:
    """The setting keywords a config dataclass declares."""
    return {field.name for field in dataclasses.fields(cls)}


def _resolve(cls: type[_C], overrides: Mapping[str, Any], config: Mapping[str, Any] | None) -> _C:
    """Parse every field of ``cls``: keyword override, else config key, else default."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = KEY_PREFIX + field.name.upper()
        if field.name in overrides:
            raw = overrides[field.name]
        elif config is not None and key in config:
            raw = config[key]
        else:
            continue
        try:
            values[field.name] = field.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigurationError(key, raw, str(exc)) from None
    return cls(**values)


def _refuse_unknown_keys(config: Mapping[str, Any], known: set[str]) -> None:
    """A ``TIERED_CACHE_*`` key that no setting has is a typo: ``..._ENDPOINT_TOKEN`` for
    ``..._ENDPOINTS_TOKEN`` would leave the endpoints open without a word."""
    for key in sorted(k for k in config if isinstance(k, str) and k.startswith(KEY_PREFIX)):
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigurationError(key, config[key], "unknown setting" + hint)


def _limits(value: Any) -> str | None:
    if value is None:
        return None
    parse_limits(value)  # raises ValueError naming the part that does not parse
    return str(value)


def _token(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and _TOKEN68.fullmatch(value)):
        return value
    # Anything else never arrives whole in "Authorization: Bearer ...": werkzeug reads
    # "a=b" as a parameter and drops spaces, so every request would get a 401.
    raise ValueError("expected a bearer token: letters, digits and -._~+/ (then = padding)")


_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclasses.dataclass(frozen=True, slots=True)
class ExtensionConfig:
    """The settings of the Flask extension besides those of its :class:`CacheConfig`."""

    sessions: bool = _setting(False, _bool, "install the Redis session interface")
    ratelimit_default: str | None = _setting(None, _limits, "limits for every route")
    ratelimit_strategy: str = _setting(
        "sliding-window-log", _one_of(STRATEGIES), "the rate limit algorithm"
    )
    ratelimit_fail_open: bool = _setting(True, _bool, "admit requests when Redis is down")
    endpoints: bool = _setting(False, _bool, "register /_tiered_cache/{health,stats,metrics}")
    endpoints_token: str | None = _setting(None, _token, "bearer token for those endpoints")

    @classmethod
    def resolve(
        cls, overrides: Mapping[str, Any], config: Mapping[str, Any]
    ) -> tuple[ExtensionConfig, CacheConfig]:
        """Split keyword overrides between the extension and its cache, and resolve both.

        :raises ConfigurationError: naming the first bad key (or unknown keyword) and value.
        """
        mine, theirs = field_names(cls), field_names(CacheConfig)
        unknown = sorted(set(overrides) - mine - theirs)
        if unknown:
            raise ConfigurationError(unknown[0], overrides[unknown[0]], "unknown setting")
        _refuse_unknown_keys(config, {KEY_PREFIX + name.upper() for name in mine | theirs})
        extension = _resolve(cls, {k: v for k, v in overrides.items() if k in mine}, config)
        cache = _resolve(CacheConfig, {k: v for k, v in overrides.items() if k in theirs}, config)
        if extension.ratelimit_default is not None:  # both valid; do they go together?
            try:
                check_strategy(
                    parse_limits(extension.ratelimit_default), extension.ratelimit_strategy
                )
            except ValueError as exc:
                key = KEY_PREFIX + "RATELIMIT_DEFAULT"
                raise ConfigurationError(key, extension.ratelimit_default, str(exc)) from None
        return extension, cache
