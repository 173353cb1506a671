"""tiered_cache: a two-tier cache for Flask/WSGI apps run as many workers.

An in-process L1 in every worker over a shared Redis L2, versioned keys, and a pub/sub
bus that tells every worker to drop what another one changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import Cache as Cache
from .errors import CacheUnavailable as CacheUnavailable
from .errors import ConfigurationError as ConfigurationError
from .errors import RateLimitExceeded as RateLimitExceeded
from .errors import SerializationError as SerializationError
from .errors import TieredCacheError as TieredCacheError
from .keyspace import Namespace as Namespace
from .sentinels import MISS as MISS

if TYPE_CHECKING:
    from .flask_ext import TieredCache as TieredCache

__all__ = [
    "MISS",
    "Cache",
    "CacheUnavailable",
    "ConfigurationError",
    "Namespace",
    "RateLimitExceeded",
    "SerializationError",
    "TieredCache",
    "TieredCacheError",
]


def __getattr__(name: str) -> Any:
    # The Flask extension is imported on first use: the core never imports Flask.
    if name == "TieredCache":
        from .flask_ext import TieredCache

        return TieredCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
