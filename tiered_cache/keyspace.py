"""The key-value methods of :class:`~tiered_cache.Cache` and :class:`Namespace`.

Both are views of one engine (the :class:`~tiered_cache.Cache`): the default namespace
keys L1 by the user's key itself; a namespace keys it by a tuple carrying the
namespace's current version, so bumping the version makes every old entry unreachable
at once without touching them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .keys import DEFAULT_NAMESPACE, encode_name
from .loading import Load
from .sentinels import MISS

if TYPE_CHECKING:
    from .cache import Cache

T = TypeVar("T")
_NS_MARK: Final = object()  # first item of namespaced local keys; no user key equals it
_OWN_MARK: Final = object()  # first item of the local keys of the library's own entries


class Keyspace:
    """The key-value methods, shared by :class:`Cache` and :class:`Namespace`."""

    __slots__ = ()

    _cache: Cache
    _ns: str | None  # encoded namespace name; None for the cache's default namespace

    def _local(self, key: str) -> Hashable:
        """The L1 key of ``key``."""
        if self._ns is None:
            return key
        return (_NS_MARK, self._ns, self._cache._versions.get(self._ns), key)

    def _local_if_trusted(self, key: str) -> Hashable | None:
        """The L1 key of ``key`` without asking Redis; None when the namespace's version
        is not known well enough here (for paths that must not wait on Redis)."""
        if self._ns is None:
            return key
        version = self._cache._versions.cached(self._ns)
        return None if version is None else (_NS_MARK, self._ns, version, key)

    guessed = False
    """Whether the namespace version this keyspace is pinned to is a guess: Redis could
    not give it, so nothing may be stored under it (see :meth:`_pinned`)."""

    def _pinned(self) -> Keyspace:
        """This keyspace with its namespace version read once, now, and kept.

        What a miss reads and what it then stores must be keyed by one version: stored
        under a version read later, a value computed before an invalidation would
        survive it.
        """
        return self

    def _global(self, key: str, local: Hashable, *, own: bool = False) -> str:
        """The Redis key of ``key`` whose L1 key is ``local``; with ``own``, of the
        library's entry ``key`` (see :class:`OwnSpace`)."""
        layout = self._cache._layout
        data = layout.own if own else layout.data
        if self._ns is None:
            return data(DEFAULT_NAMESPACE, 0, key)
        assert isinstance(local, tuple)
        return data(self._ns, local[2], key)

    def _where(self, key: str) -> tuple[Hashable, str]:
        local = self._local(key)
        return local, self._global(key, local)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, from L1, else from Redis, else ``default``.

        :param key: any string.
        :param default: returned on a miss; pass :data:`~tiered_cache.MISS` to tell a
            cached ``None`` from a miss.
        :returns: the value (a private copy when it is mutable) or ``default``.
        :raises CacheUnavailable: when Redis fails and ``fail_open`` is off.
        """
        local = self._local(key)
        value = self._cache._l1_value(local)
        if value is MISS:
            value = self._cache._read(local, self._global(key, local))
        return default if value is MISS else value

    def has(self, key: str) -> bool:
        """Tell whether ``key`` holds a fresh value (L1, else one Redis round trip)."""
        local, gkey = self._where(key)
        if self._cache._l1_value(local) is not MISS:
            return True
        return self._cache._read(local, gkey, decode=False) is not MISS

    def set(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """Store ``value`` in Redis and in this process's L1, and tell the other workers.

        :param timeout: seconds; ``None`` is ``default_timeout``; ``0`` never expires.
        :returns: True when Redis stored it; False when Redis is unavailable (the write
            is dropped, and no L1 copy is kept either).
        :raises SerializationError: when the serializer cannot encode ``value``.
        """
        local, gkey = self._where(key)
        return self._cache._store(local, gkey, value, timeout)

    def add(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """Store ``value`` only if ``key`` holds nothing in Redis (``SET NX``).

        A value ``get_or_set`` stored with ``stale_ttl`` is held until its stale window
        ends, though ``get`` and ``has`` call it gone once its ``timeout`` passed: ``add``
        refuses it until then (it is what the next ``get_or_set`` serves stale).

        :returns: True when stored.
        """
        local, gkey = self._where(key)
        return self._cache._store(local, gkey, value, timeout, only_new=True)

    def delete(self, *keys: str) -> int:
        """Delete keys everywhere: Redis, this L1 and, through the bus, every other L1.

        :returns: how many keys Redis held.
        """
        return self._cache._delete([self._global(k, self._local(k)) for k in keys])

    def get_many(self, *keys: str, default: Any = None) -> list[Any]:
        """Return the values of ``keys`` in order; L1 misses cost one round trip together."""
        where = [self._where(k) for k in keys]
        return self._cache._read_many(where, default)

    def set_many(self, mapping: Mapping[str, Any], timeout: float | None = None) -> bool:
        """Store several values in one round trip and one bus message.

        :returns: True when Redis stored them.
        """
        items = [(*self._where(k), v) for k, v in mapping.items()]
        return self._cache._store_many(items, timeout)

    def incr(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` to the integer counter at ``key`` in Redis (never held in L1).

        A new counter starts at 0 and expires after ``default_timeout``.

        :returns: the new value, or None when Redis is unavailable and failing open.
        :raises TieredCacheError: when ``key`` holds something that is not a counter.
        :raises TypeError: when ``delta`` is not a whole number (a bool included).
        :raises ValueError: when ``delta`` is outside Redis's 64-bit integers.
        """
        local, gkey = self._where(key)
        return self._cache._incr(local, gkey, delta)

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
        """Return the cached value of ``key``, or run ``loader`` once cluster-wide to make it.

        Concurrent callers for a missing key, in any thread of any process, run the
        loader once: the rest wait for the bus to announce the value, or run it
        themselves after ``lock_timeout`` seconds. An exception from the loader reaches
        its caller and releases the lock.

        :param stale_ttl: after ``timeout``, keep serving the old value for this many
            seconds while one worker in the cluster refreshes it in the background.
        :param lock_timeout: seconds to wait for another process's loader.
        :param early_refresh: recompute probabilistically before expiry (XFetch), using
            how long the loader took.
        :returns: the value (a private copy when it is mutable and came from L1).
        """
        value = self._cache._l1_value(self._local(key))
        if value is not MISS:
            return value  # type: ignore[no-any-return]
        # A miss: one namespace version from lookup to store, and the loader's value not
        # stored under a guessed one (see Keyspace.guessed), which no invalidation reaches.
        space = self._pinned()
        local, gkey = space._where(key)
        load = Load(
            local, gkey, loader, timeout, stale_ttl, lock_timeout, early_refresh, not space.guessed
        )
        return self._cache._loading.get_or_set(load)  # type: ignore[no-any-return]


class Namespace(Keyspace):
    """The keys of one namespace: the methods of :class:`Cache`, versioned by the namespace.

    :meth:`Cache.invalidate_namespace` makes every key of it unreachable at once, in
    every worker.
    """

    def __init__(self, cache: Cache, name: str) -> None:
        self._cache = cache
        self.name = name
        self._ns = encode_name(name)

    def invalidate(self) -> int:
        """Invalidate this namespace; see :meth:`Cache.invalidate_namespace`."""
        return self._cache.invalidate_namespace(self.name)

    def __repr__(self) -> str:
        return f"<Namespace {self.name!r} of {self._cache!r}>"

    def _pinned(self) -> Keyspace:
        assert self._ns is not None
        return _PinnedNamespace(self, *self._cache._versions.get_or_guess(self._ns))


class _PinnedNamespace(Namespace):
    """A namespace at one version: an invalidation after the pin makes its keys stale."""

    def __init__(self, namespace: Namespace, version: int, guessed: bool) -> None:
        # Not Namespace.__init__: the name is encoded already.
        self._cache = namespace._cache
        self.name = namespace.name
        self._ns = namespace._ns
        self._version = version
        self.guessed = guessed

    def _local(self, key: str) -> Hashable:
        return (_NS_MARK, self._ns, self._version, key)

    def _pinned(self) -> Keyspace:
        return self


def own_local(local: Hashable) -> Hashable:
    """The L1 key of the library's entry whose keyspace's L1 key would be ``local``."""
    return (_OWN_MARK, local)


class OwnSpace:
    """The library's own entries in a keyspace (route pages): beside its keys, never
    among them.

    They share the keyspace's namespace and version, so invalidating the namespace drops
    them too, but their L1 keys are marked tuples and their Redis keys
    :meth:`~tiered_cache.keys.KeyLayout.own`'s: no user key, whatever string it is (an
    app may cache under keys its visitors choose), reads one or plants one.
    """

    __slots__ = ("_space",)

    def __init__(self, space: Keyspace) -> None:
        self._space = space

    @property
    def guessed(self) -> bool:
        """See :attr:`Keyspace.guessed`."""
        return self._space.guessed

    def _pinned(self) -> OwnSpace:
        """See :meth:`Keyspace._pinned`."""
        pinned = self._space._pinned()
        return self if pinned is self._space else OwnSpace(pinned)

    def _local(self, key: str) -> Hashable:
        return (_OWN_MARK, self._space._local(key))

    def _local_if_trusted(self, key: str) -> Hashable | None:
        local = self._space._local_if_trusted(key)
        return None if local is None else (_OWN_MARK, local)

    def _global(self, key: str, local: Hashable) -> str:
        assert isinstance(local, tuple) and local[0] is _OWN_MARK
        return self._space._global(key, local[1], own=True)

    def _where(self, key: str) -> tuple[Hashable, str]:
        local = self._local(key)
        return local, self._global(key, local)
