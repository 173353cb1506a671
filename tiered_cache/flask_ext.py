"""``TieredCache``: the Flask extension, a thin adapter over :class:`~tiered_cache.Cache`.

It follows Flask's extension contract: ``TieredCache(app=None, **overrides)`` and
``init_app(app)``, any number of apps per process, no ``self.app``. Per-app state (the
app's :class:`Cache` and settings) lives in ``app.extensions["tiered_cache"]``; the
extension object holds only the keyword overrides, so one ``tc`` serves every app it is
initialised on, and decorators applied at import time bind to ``current_app`` when they
run. Settings: keyword override > ``app.config["TIERED_CACHE_*"]`` > default, validated
at ``init_app``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Flask, current_app

from ._durations import checked_seconds
from .cache import Cache
from .config import CacheConfig, ExtensionConfig
from .errors import ConfigurationError
from .http import is_field_name
from .keys import encode_name
from .keyspace import Namespace
from .locks import DistributedLock

if TYPE_CHECKING:
    from .memoize import MemoizedFunction, P
    from .ratelimit.limiter import RateLimiter
    from .sessions import SessionManager

EXTENSION_KEY = "tiered_cache"
T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(eq=False)
class AppState:
    """What one app's extension holds: ``app.extensions["tiered_cache"]``."""

    cache: Cache
    config: ExtensionConfig
    cache_config: CacheConfig
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Per-app state of the features built on the cache (route registry, publishers)."""
    on_process_start: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    """Idempotent callables run when a process serves its first request (see
    :mod:`tiered_cache.wsgi`): per-worker threads start there, never in a gunicorn
    master or a CLI process."""


class TieredCache:
    """The Flask extension.

    :param app: an app to initialise now (else call :meth:`init_app`).
    :param overrides: settings as lower-case keywords (``l1_max_items=...``), which beat
        ``app.config``.
    :raises ConfigurationError: at :meth:`init_app`, naming a bad key and its value.
    """

    def __init__(self, app: Flask | None = None, **overrides: Any) -> None:
        self._overrides = dict(overrides)
        self._memos: dict[tuple[int, int], Any] = {}
        self._limited: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set the extension up for ``app``: validate settings, make its cache.

        :raises ConfigurationError: naming the first bad setting.
        :raises RuntimeError: when ``app`` already has it.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"tiered_cache is already initialised on {app!r}")
        config, cache_config = ExtensionConfig.resolve(self._overrides, app.config)
        from .limiting import check_strategies

        # Before any feature touches the app: the routes registered so far (the rest are
        # checked at the first request).
        check_strategies(app.view_functions, config.ratelimit_strategy)
        cache = Cache(**_cache_settings(cache_config, app))
        state = AppState(cache, config, cache_config)
        from .limiting import MADE_KEY

        state.extras[MADE_KEY] = self._limited
        app.extensions[EXTENSION_KEY] = state
        try:
            for name in _FEATURES:
                importlib.import_module(f"{__package__}.{name}").init_app(app, state)
        except BaseException:  # whatever a feature raises, the cache is not left open
            del app.extensions[EXTENSION_KEY]
            cache.close()
            raise

    # -- the current app's state -------------------------------------------------------

    @staticmethod
    def state(app: Flask | None = None) -> AppState:
        """The extension's state for ``app`` (default: the current app).

        :raises RuntimeError: outside an app context, or when the app lacks the extension.
        """
        if app is None:
            try:
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            except RuntimeError:
                raise RuntimeError(
                    "tiered_cache is used outside an application context: use it in a "
                    "request, or inside 'with app.app_context():'"
                ) from None
        state = app.extensions.get(EXTENSION_KEY)
        if state is None:
            raise RuntimeError(f"TieredCache.init_app() was not called for {app!r}")
        return state  # type: ignore[no-any-return]

    @property
    def cache(self) -> Cache:
        """The current app's :class:`~tiered_cache.Cache`."""
        return self.state().cache

    # -- Cache's methods, on the current app's cache -----------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """:meth:`Cache.get` on the current app's cache."""
        return self.cache.get(key, default)

    def set(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """:meth:`Cache.set` on the current app's cache."""
        return self.cache.set(key, value, timeout)

    def add(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """:meth:`Cache.add` on the current app's cache."""
        return self.cache.add(key, value, timeout)

    def delete(self, *keys: str) -> int:
        """:meth:`Cache.delete` on the current app's cache."""
        return self.cache.delete(*keys)

    def get_many(self, *keys: str, default: Any = None) -> list[Any]:
        """:meth:`Cache.get_many` on the current app's cache."""
        return self.cache.get_many(*keys, default=default)

    def set_many(self, mapping: Mapping[str, Any], timeout: float | None = None) -> bool:
        """:meth:`Cache.set_many` on the current app's cache."""
        return self.cache.set_many(mapping, timeout)

    def has(self, key: str) -> bool:
        """:meth:`Cache.has` on the current app's cache."""
        return self.cache.has(key)

    def incr(self, key: str, delta: int = 1) -> int | None:
        """:meth:`Cache.incr` on the current app's cache."""
        return self.cache.incr(key, delta)

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        timeout: float | None = None,
        *,
        stale_ttl: float = 0,
        lock_timeout: float = 10.0,
        early_refresh: bool = True,
    ) -> T:
        """:meth:`Cache.get_or_set` on the current app's cache."""
        return self.cache.get_or_set(
            key,
            loader,
            timeout,
            stale_ttl=stale_ttl,
            lock_timeout=lock_timeout,
            early_refresh=early_refresh,
        )

    def namespace(self, name: str) -> Namespace:
        """:meth:`Cache.namespace` on the current app's cache."""
        return self.cache.namespace(name)

    def invalidate_namespace(self, name: str) -> int:
        """:meth:`Cache.invalidate_namespace` on the current app's cache."""
        return self.cache.invalidate_namespace(name)

    def clear(self) -> int:
        """:meth:`Cache.clear` on the current app's cache."""
        return self.cache.clear()

    def lock(
        self, name: str, timeout: float = 10.0, blocking_timeout: float | None = None
    ) -> DistributedLock:
        """:meth:`Cache.lock` on the current app's cache."""
        return self.cache.lock(name, timeout, blocking_timeout)

    def stats(self) -> dict[str, Any]:
        """:meth:`Cache.stats` of the current app's cache, in this process."""
        return self.cache.stats()

    # -- route caching ----------------------------------------------------------------

    def cached(
        self,
        timeout: float | None = None,
        *,
        key_prefix: str | None = None,
        query_string: bool = True,
        vary: tuple[str, ...] = (),
        namespace: str | None = None,
        unless: Callable[[], bool] | None = None,
        per_user: bool = False,
        public: bool = False,
        status_codes: tuple[int, ...] = (200,),
        etag: bool = True,
        stale_ttl: float = 0,
    ) -> Callable[[F], F]:
        """Cache a view's whole response (SPEC section 3); see :mod:`tiered_cache.routes`.

        :param timeout: seconds, as :meth:`Cache.set`.
        :param key_prefix: the key's first part (default: the request path).
        :param query_string: key on the (sorted) query string too.
        :param vary: request headers to key on besides the response's own ``Vary``
            (a tuple of names, one each; ``"*"`` is refused: such a page is never stored).
        :param namespace: a namespace whose invalidation drops these pages.
        :param unless: called per request; true bypasses the cache (``X-Cache: BYPASS``).
        :param per_user: key by the session's user, so each user has their own page.
        :param public: shared even for requests with ``Authorization``, and served by the
            WSGI fast path before Flask builds a request context.
        :param status_codes: the statuses that may be stored, from 200 to 599 but for 206
            and 304 (a part of a page, and an answer to one request's condition, are not
            pages to serve to others: RFC 9111 sections 3.3 and 4.3.4).
        :param etag: give stored pages a strong ETag and answer ``If-None-Match`` with 304.
        :param stale_ttl: serve a page this long past ``timeout`` while one worker
            refreshes it.
        """
        from .routes import RouteOptions, cached_view

        if isinstance(cast(object, vary), str):  # untyped callers: vary="Accept" is a slip
            raise TypeError(f"cached(vary=...) takes a tuple of header names, not {vary!r}")
        vary = tuple(vary)  # once: an untyped caller's generator would be spent by a check
        if "*" in vary:
            raise ValueError("cached(vary=...): a page that varies on '*' is never shared")
        for name in vary:  # "Accept, Cookie" would be one name no request sends: no Vary
            if not is_field_name(name):
                raise ValueError(f"cached(vary=...): {name!r} is not a header name")
        # Here, where the route is written, not as a 500 on its first miss.
        given = tuple(status_codes)
        for status in given:  # an int or an IntEnum such as http.HTTPStatus.OK; no bool
            whole = isinstance(status, int) and not isinstance(status, bool)
            if not whole or not 200 <= status <= 599 or status in {206, 304}:
                raise ValueError(
                    f"cached(status_codes=...): {status!r} is not a status a page may be "
                    "stored with (200 to 599, but for 206 and 304)"
                )
        status_codes = tuple(int(status) for status in given)
        if key_prefix is not None and not isinstance(cast(object, key_prefix), str):
            # Flask-Caching takes a callable here: a key per request is what vary=,
            # per_user= and namespace= say, in ways the fast path and 304s can follow.
            raise TypeError(
                f"cached(key_prefix=...) takes a string, not {key_prefix!r}: to key pages "
                "by what a request carries, use vary=, per_user= or query_string="
            )
        if namespace is not None:
            encode_name(namespace)  # a ValueError now, not on the route's first request
        if unless is not None and not callable(unless):
            raise TypeError(f"cached(unless=...) takes a callable, not {unless!r}")
        if timeout is not None:
            checked_seconds("cached(timeout=...)", timeout)
        checked_seconds("cached(stale_ttl=...)", stale_ttl)
        options = RouteOptions(
            timeout=timeout,
            key_prefix=key_prefix,
            query_string=query_string,
            vary=vary,
            namespace=namespace,
            unless=unless,
            per_user=per_user,
            public=public,
            status_codes=status_codes,
            etag=etag,
            stale_ttl=stale_ttl,
        )
        return cached_view(self, options)

    # -- rate limits and sessions ------------------------------------------------------

    def limit(
        self,
        limits: str,
        *,
        key: Callable[[], str] | None = None,
        strategy: str | None = None,
        cost: int | Callable[[], int] = 1,
        methods: Iterable[str] | None = None,
        exempt_when: Callable[[], bool] | None = None,
        scope: str | None = None,
    ) -> Callable[[F], F]:
        """Rate-limit a view (SPEC section 6); see :mod:`tiered_cache.limiting`.

        :param limits: ``"10/second;1000/hour"``: every limit is checked in one round trip.
        :param key: called per request for the client's key (default: its address).
        :param strategy: one of :data:`~tiered_cache.ratelimit.limits.STRATEGIES`
            (default: ``TIERED_CACHE_RATELIMIT_STRATEGY``).
        :param cost: how much one request spends, or a callable giving it per request.
        :param methods: the HTTP methods counted (default: all).
        :param exempt_when: called per request; true skips the limit.
        :param scope: a name shared by the routes that share these limits (default: the
            view's endpoint, so each route counts on its own).
        :raises ValueError: when ``limits`` or ``strategy`` is not valid (at decoration).
        """
        from .limiting import LimitOptions, limited_view

        options = LimitOptions.parse(
            limits,
            key=key,
            strategy=strategy,
            cost=cost,
            methods=methods,
            exempt_when=exempt_when,
            scope=scope,
        )
        return limited_view(options, self._limited)

    @property
    def limiter(self) -> RateLimiter:
        """The current app's :class:`~tiered_cache.ratelimit.limiter.RateLimiter`."""
        from .limiting import limiter_of

        return limiter_of(self.state())

    @property
    def sessions(self) -> SessionManager:
        """The current app's :class:`~tiered_cache.sessions.SessionManager`.

        :raises RuntimeError: when ``TIERED_CACHE_SESSIONS`` is off for the app.
        """
        from .sessions import manager_of

        return manager_of(self.state())

    # -- memoize, bound to the current app ----------------------------------------------

    def memoize(
        self,
        timeout: float | None = None,
        *,
        namespace: str | None = None,
        unless: Callable[[], bool] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """:meth:`Cache.memoize`, usable before ``init_app``: each call uses the cache of
        the app it runs in (one memoized function per app, made on first use).
        """
        if timeout is not None:  # here, where it is written, as cached() does
            checked_seconds("memoize(timeout=...)", timeout)

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            def on(cache: Cache) -> MemoizedFunction[P, R]:
                return cache.memoize(timeout, namespace=namespace, unless=unless)(fn)

            @functools.wraps(fn)
            def call(*args: P.args, **kwargs: P.kwargs) -> R:
                return self._memoized(call)(*args, **kwargs)  # type: ignore[no-any-return]

            call.__tiered_cache_memoize__ = on  # type: ignore[attr-defined]
            return call

        return decorate

    def _memoized(self, wrapper: Callable[..., Any]) -> MemoizedFunction[..., Any]:
        """The memoized function behind ``wrapper`` on the current app's cache."""
        on = getattr(wrapper, "__tiered_cache_memoize__", None)
        if on is None:
            raise TypeError(f"{wrapper!r} is not memoized by TieredCache.memoize")
        cache = self.cache
        key = (id(cache), id(wrapper))
        memo = self._memos.get(key)
        if memo is None or memo.memo.cache is not cache:  # ids of dead caches are reused
            memo = self._memos[key] = on(cache)
        return memo  # type: ignore[no-any-return]

    def delete_memoized(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
        """:meth:`Cache.delete_memoized` for a function decorated with :meth:`memoize`.

        :raises TypeError: when ``fn`` was not decorated by :meth:`memoize`.
        """
        return self.cache.delete_memoized(self._memoized(fn), *args, **kwargs)


def _cache_settings(config: CacheConfig, app: Flask) -> dict[str, Any]:
    """Keywords for the app's Cache; pickle signs with SECRET_KEY unless told otherwise."""
    settings = dataclasses.asdict(config)
    if settings["secret_key"] is None and app.config.get("SECRET_KEY"):
        settings["secret_key"] = app.config["SECRET_KEY"]
    if config.serializer == "pickle" and not settings["secret_key"]:
        raise ConfigurationError(
            "TIERED_CACHE_SECRET_KEY", None, "the pickle serializer needs it (or SECRET_KEY)"
        )
    return settings


# The modules built on the extension; each has ``init_app(app, state)``, run in this order.
_FEATURES = ("sessions", "limiting", "routes", "wsgi", "cli", "endpoints")
