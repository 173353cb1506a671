"""Objects that own one process's state, renewed in every child made by ``os.fork``.

A forked child (a gunicorn worker under ``preload_app``) inherits its parent's memory but
not its threads: a listener or publisher thread is gone, a lock another thread held at
the fork stays held for ever, and a socket shared with the parent would interleave both
processes' bytes. Each object that owns such things registers here with the function
that renews it, which runs in the child as it starts, in the order the objects
registered (a cache before the routes and limiters built on it). Objects are
held weakly: one that nobody else holds is not kept alive, nor renewed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

# Object -> the function that renews it (a plain function: a bound method would keep its
# object alive). A WeakKeyDictionary, not a WeakSet, for the order of registration.
_registry: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def renew_after_fork(obj: _T, renew: Callable[[_T], None]) -> None:
    """Call ``renew(obj)`` in every child this process forks from now on."""
    _registry[obj] = renew


def forget(obj: object) -> None:
    """Stop renewing ``obj`` (it was closed: a child must not start it again)."""
    _registry.pop(obj, None)


def registered(kind: type[_T]) -> list[_T]:
    """The registered objects of ``kind`` that are still alive, in registration order."""
    return [obj for obj in list(_registry) if isinstance(obj, kind)]


def _after_fork_in_child() -> None:
    for obj, renew in list(_registry.items()):
        renew(obj)


os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["forget", "registered", "renew_after_fork"]
