"""The Redis key layout: ``{prefix}:{version}:{namespace}:{namespace_version}:{key}``.

User keys are any string. A key made only of safe characters and at most
:data:`MAX_PLAIN_KEY` long is used as it is; any other key is replaced by ``#`` and a
BLAKE2b digest of it. ``#`` is not a safe character, so a hashed key can never equal a
plain one, and a user-controlled key can neither break the layout nor pick a Redis
Cluster slot with ``{...}``.

Besides data keys the layout has, under the same prefix and schema version:

- ``{namespace}:{namespace_version}:#:{encoded key}``: the library's own entries (route
  pages and their ``Vary`` indexes, memoized results), beside the user's keys of the same
  namespace and never among them (:meth:`KeyLayout.own`): no encoded user key starts
  with ``#:``, so no user key, whatever string it is, reads or plants one;
- ``#ns:{name}``: the version counter of a namespace (never removed by ``clear``; it
  starts from the time in microseconds, so a version number is never reused even when
  the counter itself is evicted);
- ``#stats:{host}:{pid}:{id}``: each worker's published figures, and ``#stats:index``,
  the set of those keys, so that readers never SCAN (both kept by ``clear``);
- ``{data key}#lock``: the single-flight / refresh lock of a data key (kept by
  ``clear``, as every lock: ``#`` is not a safe character, so no user key ends so);
- ``#lock:{name}``: named locks from :meth:`Cache.lock`;
- ``#health``: written, with a short TTL, by each health check, to prove Redis takes
  writes;
- the bus channel ``{prefix}:{version}:#bus``, and each listener's own,
  ``{prefix}:{version}:#bus:{sender}``, for the marks of its barriers
  (:meth:`~tiered_cache.bus.Bus.barrier`).

The core engine needs no Redis Cluster hash tags: every multi-key call it makes (MGET,
pipelines) is split by redis-py's cluster client per slot, and no Lua script of the core
touches two keys.
"""

from __future__ import annotations

import functools
import hashlib
import re

MAX_PLAIN_KEY = 200
DEFAULT_NAMESPACE = ""  # an empty name, which no user namespace can have

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.:/=+,@!$%&*;~^|-]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.=+,@!$%&*;~^|-]+")
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH, PSUBSCRIBE)."""
    return text.translate(_GLOB_SPECIAL)


def _digest(text: str) -> str:
    return "#" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


@functools.lru_cache(maxsize=4096)
def _encode_str(key: str) -> str:
    if len(key) <= MAX_PLAIN_KEY and _SAFE_KEY.fullmatch(key):
        return key
    return _digest(key)


def encode_key(key: str) -> str:
    """Return the Redis form of a user key: itself when safe and short, else its digest.

    :param key: any string.
    :returns: a string of safe characters, at most :data:`MAX_PLAIN_KEY` + 1 long.
    :raises TypeError: when ``key`` is not a string.
    """
    if not isinstance(key, str):
        raise TypeError(f"cache keys are strings, not {type(key).__name__}: {key!r}")
    return _encode_str(key)  # memoized: every L1 miss of a hot key encodes it again


def encode_name(name: str) -> str:
    """Return the Redis form of a namespace name (no ``:`` allowed, unlike keys).

    :raises ValueError: when ``name`` is empty.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a namespace name is a non-empty string, not {name!r}")
    if len(name) <= MAX_PLAIN_KEY and _SAFE_NAME.fullmatch(name):
        return name
    return _digest(name)


class KeyLayout:
    """Builds every Redis key and channel name of one prefix and schema version."""

    __slots__ = ("base", "channel", "counter_prefix", "health_probe", "stats_index", "stats_prefix")

    def __init__(self, prefix: str, version: int) -> None:
        self.base = f"{prefix}:{version}:"
        self.channel = f"{self.base}#bus"
        self.counter_prefix = f"{self.base}#ns:"
        self.stats_prefix = f"{self.base}#stats:"
        self.stats_index = f"{self.stats_prefix}index"
        self.health_probe = f"{self.base}#health"

    def data(self, namespace: str, namespace_version: int, key: str) -> str:
        """Return the data key of ``key`` (already encoded names are not re-encoded)."""
        return self.space(namespace, namespace_version) + encode_key(key)

    def own(self, namespace: str, namespace_version: int, key: str) -> str:
        """Return the Redis key of one of the library's own entries (a page, a memoized
        result) named ``key``: ``#:`` and the encoded key, which no user key's data key
        ends with (an encoded user key is safe characters, ``#`` not among them, or ``#``
        and 40 hex digits)."""
        return self.space(namespace, namespace_version) + "#:" + encode_key(key)

    def space(self, namespace: str, namespace_version: int) -> str:
        """Return what every data key of one namespace version starts with."""
        return f"{self.base}{namespace}:{namespace_version}:"

    def counter(self, namespace: str) -> str:
        """Return the version counter key of an encoded namespace name."""
        return self.counter_prefix + namespace

    @staticmethod
    def flight_lock(data_key: str) -> str:
        """Return the single-flight lock key of a data key."""
        return data_key + "#lock"

    def named_lock(self, name: str) -> str:
        """Return the key of a named lock."""
        return f"{self.base}#lock:{encode_key(name)}"

    @property
    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every key under this prefix and version."""
        return glob_escape(self.base) + "*"

    def kept_by_clear(self, redis_key: bytes | str) -> bool:
        """Tell whether ``clear`` keeps a key found by SCAN: version counters, worker
        stats, and locks (a lock someone holds must stay held; each has a TTL)."""
        text = redis_key
        if isinstance(text, bytes):  # a foreign key under the prefix need not be UTF-8
            text = text.decode(errors="surrogateescape")
        return (
            text.startswith((self.counter_prefix, self.stats_prefix, self.base + "#lock:"))
            or text.endswith("#lock")  # a data key's flight lock: no user key ends so
        )
