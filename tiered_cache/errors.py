"""The exceptions of tiered_cache: one base class, one subclass per kind of failure."""

from __future__ import annotations


class TieredCacheError(Exception):
    """Base class of every error this package raises."""


class ConfigurationError(TieredCacheError, ValueError):
    """A setting has a bad value; the message names the setting and the value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        super().__init__(f"{key}={value!r}: {reason}")


class CacheUnavailable(TieredCacheError):
    """Redis could not be reached and the cache is configured to fail closed.

    The Redis error that caused it is kept as ``__cause__``.
    """


class SerializationError(TieredCacheError):
    """A value could not be encoded, or stored bytes could not be decoded."""


class RateLimitExceeded(TieredCacheError):
    """A rate limit refused the request."""

    def __init__(self, limit: str, retry_after: float) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(f"rate limit {limit!r} exceeded; retry after {retry_after:.3f}s")
