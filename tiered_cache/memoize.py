"""``@cache.memoize``: a function's results cached per arguments, in both tiers.

Keys. In L1 a call is keyed by the argument tuple itself (as ``functools.lru_cache``
does: ``f(1, b=2)`` and ``f(1, 2)`` are different calls, and ``1 == 1.0`` share an L1
entry), so a hit formats no string. In Redis it is keyed by the function's qualified
name, its version, and ``repr`` of the arguments; arguments whose ``repr`` is the
default ``<... at 0x...>`` differ in every process, so they are refused with a
``TypeError`` unless they define ``__caching_id__()``. Unhashable arguments (lists,
dicts) work, keyed by that ``repr`` in L1 too.

Versions. Every memoized function has a version counter in Redis, so
``delete_memoized(fn)`` drops all of its results in every worker in O(1); with
``namespace=...`` the namespace's version is part of the key as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .keys import DEFAULT_NAMESPACE, encode_name
from .loading import Load
from .sentinels import MISS

if TYPE_CHECKING:
    from .cache import Cache

P = ParamSpec("P")
R = TypeVar("R")


class Memoized(Generic[P, R]):
    """A memoized function; call it as the original.

    :param cache: the cache that holds its results.
    :param fn: the function.
    :param timeout: seconds, as :meth:`Cache.set`.
    :param namespace: a namespace whose invalidation also drops these results.
    :param unless: called before each call; when it returns true the cache is bypassed.
    """

    def __init__(
        self,
        cache: Cache,
        fn: Callable[P, R],
        *,
        timeout: float | None,
        namespace: str | None,
        unless: Callable[[], bool] | None,
    ) -> None:
        self.cache = cache
        self.__wrapped__ = fn
        self._timeout = timeout
        self._unless = unless
        self._namespace = encode_name(namespace) if namespace else None
        self.qualname = f"{fn.__module__}.{fn.__qualname__}"
        self.counter = encode_name("memo." + self.qualname)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._unless is not None and self._unless():
            return self.__wrapped__(*args, **kwargs)
        versions = self.cache._versions
        ns_version = None if self._namespace is None else versions.cached(self._namespace)
        local: Hashable = (
            self,
            versions.cached(self.counter),
            ns_version,
            args,
            tuple(kwargs.items()),
        )
        try:
            value = self.cache._l1_value(local)
        except TypeError:  # unhashable arguments: see _miss
            local = None
            value = MISS
        if value is not MISS:
            return value  # type: ignore[no-any-return]
        return self._miss(local, args, kwargs)

    def _miss(self, local: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """Resolve versions, then load through the cache's single-flight path."""
        versions = self.cache._versions
        ns_version = versions.get(self._namespace) if self._namespace is not None else 0
        fn_version = versions.get(self.counter)
        gkey = self._gkey(fn_version, ns_version, args, kwargs)
        ns_part = None if self._namespace is None else ns_version
        if local is not None:
            local = (self, fn_version, ns_part, args, tuple(kwargs.items()))
        else:  # unhashable arguments: the Redis key stands in, tagged with this function
            local = (self, gkey)
        load = Load(local, gkey, lambda: self.__wrapped__(*args, **kwargs), self._timeout)
        return self.cache._get_or_set(load)  # type: ignore[no-any-return]

    def _gkey(
        self, fn_version: int, ns_version: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        namespace = self._namespace or DEFAULT_NAMESPACE
        key = f"memo:{self.qualname}:{fn_version}:{_arguments_repr(args, kwargs)}"
        return self.cache._layout.data(namespace, ns_version, key)

    def redis_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The Redis key of one call's result (current versions)."""
        versions = self.cache._versions
        ns_version = versions.get(self._namespace) if self._namespace is not None else 0
        return self._gkey(versions.get(self.counter), ns_version, args, kwargs)

    def __repr__(self) -> str:
        return f"<memoized {self.qualname}>"


def _arguments_repr(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A representation of the arguments that is the same in every process."""
    parts = [_stable_repr(a) for a in args]
    parts += [f"{name}={_stable_repr(kwargs[name])}" for name in sorted(kwargs)]
    return "(" + ",".join(parts) + ")"


def _stable_repr(value: Any) -> str:
    caching_id = getattr(value, "__caching_id__", None)
    if caching_id is not None:
        return str(caching_id())
    text = repr(value)
    if " at 0x" in text:
        raise TypeError(
            f"memoize cannot key an argument by its default repr {text}: it differs in "
            "every process; give its class a __repr__ or a __caching_id__() method"
        )
    return text
