"""``@cache.memoize``: a function's results cached per arguments, in both tiers.

Keys. In Redis a call is keyed by the function's qualified name, its version, and
``repr`` of the arguments; arguments whose ``repr`` is the default ``<... at 0x...>``
differ in every process, so they are refused with a ``TypeError`` unless they define
``__caching_id__()`` (whose result is keyed with the argument's class: ``User(1)`` and
``Product(1)`` are different calls). Sets and frozensets are written with their items
sorted, and tuples, lists and dicts with their items written the same way, so that a
call has one key in every process (a set's own order follows string hashes, which
differ between processes). In L1, when every argument is a ``str``, ``bytes``, ``int``,
``float``, ``bool`` or ``None``, a call is keyed by the argument tuple itself (as
``functools.lru_cache`` does: ``f(1, b=2)`` and ``f(1, 2)`` are different calls, and
``1 == 1.0`` share an L1 entry), so a hit formats no string. Any other argument (a
tuple, a dataclass, a UUID, a list) keys its call in L1 by the Redis key, formatted on
every call: L1's hits take no lock, which is safe only for keys that compare in C, and
an ``__eq__`` written in Python, run during a lookup while another thread changes L1,
corrupts it (CPython's ``OrderedDict`` can crash).

Versions. Every memoized function has a version counter in Redis, so
``delete_memoized(fn)`` drops all of its results in every worker in O(1); with
``namespace=...`` the namespace's version is part of the key as well.

The wrapper is a plain function, not an object with ``__call__``: calling an instance
costs a slot lookup and a bound method on every hit.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Final, Generic, ParamSpec, Protocol, TypeVar, cast

from .keys import DEFAULT_NAMESPACE, encode_name
from .loading import Load
from .sentinels import MISS

if TYPE_CHECKING:
    from .cache import Cache

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class MemoizedFunction(Protocol[P, R_co]):
    """What ``@cache.memoize`` returns: the function, plus its :class:`Memo`."""

    memo: Memo[Any, Any]
    __wrapped__: Callable[..., Any]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


class Memo(Generic[P, R]):
    """The cache state of one memoized function.

    :param cache: the cache that holds its results.
    :param fn: the function.
    :param timeout: seconds, as :meth:`Cache.set`.
    :param namespace: a namespace whose invalidation also drops these results.
    """

    def __init__(
        self, cache: Cache, fn: Callable[P, R], *, timeout: float | None, namespace: str | None
    ) -> None:
        self.cache = cache
        self.fn = fn
        self.timeout = timeout
        self.namespace = encode_name(namespace) if namespace else None
        self.qualname = f"{fn.__module__}.{fn.__qualname__}"
        self.counter = encode_name("memo." + self.qualname)

    def local(
        self, fn_version: int, ns_version: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Hashable:
        """The L1 key of a call whose arguments all compare in C (:data:`_C_COMPARED`):
        this memo, its versions, the arguments as given. Its lengths tell the shapes
        apart: keyword arguments or not, a namespace or not."""
        if kwargs:
            namespaced = ns_version if self.namespace else None
            return (self, fn_version, namespaced, args, tuple(kwargs.items()))
        if self.namespace:
            return (self, fn_version, ns_version, args)
        return (self, fn_version, args)

    def miss(self, local: Hashable | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """Resolve the versions, then load through the cache's single-flight path.

        :param local: None when an argument does not compare in C (or is unhashable).
        """
        fn_version, ns_version, guessed = self._versions()
        gkey = self._gkey(fn_version, ns_version, args, kwargs)
        # Other arguments: the Redis key stands in, tagged with this memo.
        local = (self, gkey) if local is None else self.local(fn_version, ns_version, args, kwargs)
        call = lambda: self.fn(*args, **kwargs)  # noqa: E731
        load = Load(local, gkey, call, self.timeout, keep=not guessed)
        return self.cache._get_or_set(load)  # type: ignore[no-any-return]

    def redis_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The Redis key of one call's result (current versions)."""
        return self._gkey(*self._versions()[:2], args, kwargs)

    def _versions(self) -> tuple[int, int, bool]:
        """The function's version, its namespace's (0 without one), and whether either
        is a guess (nothing is stored under it)."""
        versions = self.cache._versions
        fn_version, fn_guessed = versions.get_or_guess(self.counter)
        ns_version, ns_guessed = 0, False
        if self.namespace is not None:
            ns_version, ns_guessed = versions.get_or_guess(self.namespace)
        return fn_version, ns_version, fn_guessed or ns_guessed

    def _gkey(
        self, fn_version: int, ns_version: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        namespace = self.namespace or DEFAULT_NAMESPACE
        key = f"memo:{self.qualname}:{fn_version}:{_arguments_repr(args, kwargs)}"
        return self.cache.layout.own(namespace, ns_version, key)

    def __repr__(self) -> str:
        return f"<memo of {self.qualname}>"


def memoized(
    cache: Cache,
    fn: Callable[P, R],
    *,
    timeout: float | None,
    namespace: str | None,
    unless: Callable[[], bool] | None,
) -> MemoizedFunction[P, R]:
    """Wrap ``fn`` so its results are cached; see the module documentation.

    :param unless: called before each call; when it returns true the cache is bypassed.
    """
    memo = Memo(cache, fn, timeout=timeout, namespace=namespace)
    counter, namespace = memo.counter, memo.namespace
    current = cache._versions_current  # the same dict for the cache's life, forks included
    compared_in_c = _C_COMPARED

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if unless is not None and unless():
            return fn(*args, **kwargs)
        for arg in args:
            if type(arg) not in compared_in_c:
                return memo.miss(None, args, kwargs)
        # Memo.local, inlined: this is the hit path. A version read here may be out of
        # date (or None, not known yet); the entry it finds is still bounded by its own
        # age checks, and a miss keys its fill by the versions it resolves.
        if kwargs:
            if not compared_in_c.issuperset(map(type, kwargs.values())):
                return memo.miss(None, args, kwargs)
            namespaced = current.get(namespace) if namespace else None
            local: Hashable = (memo, current.get(counter), namespaced, args, tuple(kwargs.items()))
        elif namespace:
            local = (memo, current.get(counter), current.get(namespace), args)
        else:
            local = (memo, current.get(counter), args)
        value = cache._l1_value(local)
        if value is MISS:
            return memo.miss(local, args, kwargs)
        return value  # type: ignore[no-any-return] # not typing.cast: a call on every hit

    wrapper = cast(MemoizedFunction[P, R], call)
    wrapper.memo = memo
    return wrapper


def _arguments_repr(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A representation of the arguments that is the same in every process."""
    parts = [_stable_repr(a) for a in args]
    parts += [f"{name}={_stable_repr(kwargs[name])}" for name in sorted(kwargs)]
    return "(" + ",".join(parts) + ")"


# Values whose repr is their content (a string may well say "at 0x..."), and the shape
# of object.__repr__ (also inside a container's repr, or a bound method's).
_PLAIN: Final = frozenset({str, bytes, int, float, bool, type(None)})
_C_COMPARED: Final = _PLAIN
"""Argument types (exactly these, not subclasses) whose hashing and ``==`` run in C, so
that a lock-free L1 lookup of a key made of them runs no Python code."""
_DEFAULT_REPR: Final = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
_CONTAINERS: Final = frozenset({tuple, list, dict, set, frozenset})


def _plain_dict(value: dict[Any, Any]) -> bool:
    """Whether a dict holds only plain keys and values: its repr is then stable."""
    return all(type(k) in _PLAIN and type(v) in _PLAIN for k, v in value.items())


def _container_repr(value: Any, seen: frozenset[int]) -> str:
    """A container as repr writes it, with what it holds written by :func:`_stable_repr`,
    and a set's items sorted (iterated, they come in an order of string hashes, which
    differ between processes)."""
    kind = type(value)
    if kind is dict:
        pairs = (f"{_stable_repr(k, seen)}: {_stable_repr(v, seen)}" for k, v in value.items())
        return f"{{{', '.join(pairs)}}}"
    items = [_stable_repr(item, seen) for item in value]
    if kind in (set, frozenset):
        return f"{kind.__name__}({{{', '.join(sorted(items))}}})"
    if kind is list:
        return f"[{', '.join(items)}]"
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _stable_repr(value: Any, seen: frozenset[int] = frozenset()) -> str:
    kind = type(value)
    # Not on a class: its __caching_id__ is the instances' method (a classmethod's cls).
    caching_id = None if isinstance(value, type) else getattr(value, "__caching_id__", None)
    if caching_id is not None:
        # Named with its class and quoted: User(1), Product(1), 1 and "7,8" stay apart.
        return f"<{kind.__module__}.{kind.__qualname__} id={caching_id()!r}>"
    if kind is tuple or kind is list:
        text = repr(value)  # in C: most arguments end here
        # No set or dict inside (no reordering), and no default repr, which an item's
        # __caching_id__ may stand in for below.
        if "{" not in text and "set(" not in text and not _DEFAULT_REPR.search(text):
            return text
    if kind in _CONTAINERS:
        if kind is dict and _plain_dict(value):
            return repr(value)
        if id(value) in seen:
            return "..."  # a container inside itself, as repr marks it
        return _container_repr(value, seen | {id(value)})
    return _checked(value, repr(value))


def _checked(value: Any, text: str) -> str:
    """``text``, the repr of ``value``, unless it holds a default repr, which differs in
    every process."""
    if type(value) not in _PLAIN and _DEFAULT_REPR.search(text):
        raise TypeError(
            f"memoize cannot key an argument by its default repr {text}: it differs in "
            "every process; give its class a __repr__ or a __caching_id__() method"
        )
    return text
