"""The exceptions of tiered_cache: one base class, one subclass per kind of failure."""

from __future__ import annotations

import math

from ._redaction import shown


class TieredCacheError(Exception):
    """Base class of every error this package raises."""


class ConfigurationError(TieredCacheError, ValueError):
    """A setting has a bad value; the message names the setting and the value (a Redis
    URL without its passwords, a secret by its length only: messages reach logs)."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        super().__init__(f"{key}={shown(key, value)}: {reason}")


class CacheUnavailable(TieredCacheError):
    """Redis could not be reached and the cache is configured to fail closed.

    The Redis error that caused it is kept as ``__cause__``.
    """


class SerializationError(TieredCacheError):
    """A value could not be encoded, or stored bytes could not be decoded."""


class RateLimitExceeded(TieredCacheError):
    """A rate limit refused the request.

    :ivar limit: the limit that refused, as text.
    :ivar retry_after: seconds until the request could be admitted; ``math.inf`` when it
        never can be (its cost is more than the limit's amount). The 429 that
        ``@tc.limit`` raises holds whole seconds there, or None for never, as werkzeug's
        ``TooManyRequests`` does.
    """

    retry_after: float | None

    def __init__(self, limit: str, retry_after: float) -> None:
        self.limit = limit
        self.retry_after = retry_after
        if math.isinf(retry_after):
            reason = "its cost is more than the limit's amount, so it can never be admitted"
        else:
            reason = f"retry after {retry_after:.3f}s"
        super().__init__(f"rate limit {limit!r} exceeded; {reason}")
