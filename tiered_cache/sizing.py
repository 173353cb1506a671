"""What an L1 entry really costs in memory, for the byte budget.

``l1_max_bytes`` bounds the memory the L1 holds, not the size of serialized values: a
200-byte JSON object decodes to about 1.1 KB of Python dicts and strings, and every
entry carries its keys, its index slots and its bookkeeping. The charge is:

- the decoded value, measured with :func:`sys.getsizeof` over its containers (dicts,
  lists, tuples, sets) and their items, each container counted once;
- both keys (the local key and the Redis key string);
- :data:`ENTRY_OVERHEAD` for the ``Entry`` object and its numbers, the store's own
  per-entry bookkeeping (``L1Store.entry_overhead``: an ``OrderedDict`` node and a
  reverse-index slot for the hand-written LRU, more for cachetools), and
  :data:`COPIER_OVERHEAD` for the planned copier of a mutable value.

The constants were measured with ``tracemalloc`` on CPython 3.11; ``make bench`` (the
byte-budget benchmark) prints the real per-entry memory next to the charge.
"""

from __future__ import annotations

from collections.abc import Hashable
from sys import getsizeof
from typing import Any, Final

ENTRY_OVERHEAD: Final = 160
COPIER_OVERHEAD: Final = 300
_CONTAINERS: Final = (dict, list, tuple, set, frozenset)
_ATOMS: Final = frozenset({str, bytes, int, float, bool, type(None)})


def value_size(value: Any) -> int:
    """Bytes held by ``value`` and everything it contains (shared objects counted once)."""
    if type(value) in _ATOMS:
        return getsizeof(value)
    total = 0
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            stack.extend(item)
    return total


def entry_size(
    value: Any, local: Hashable, gkey: str, *, copied: bool, store: int, stored: int
) -> int:
    """The bytes charged to the L1 budget for one entry.

    The value is charged what :func:`value_size` finds in it, and never less than its
    bytes in Redis: an object that is no container (a dataclass, a class instance,
    unpickled) holds what its serialized form says, which ``getsizeof`` of its shell
    does not see.

    :param copied: whether the entry carries a copier (a mutable value).
    :param store: the store's own bytes per entry (``L1Store.entry_overhead``).
    :param stored: the value's bytes in Redis.
    """
    held = max(value_size(value), stored)
    size = held + value_size(local) + getsizeof(gkey) + ENTRY_OVERHEAD + store
    return size + COPIER_OVERHEAD if copied else size
