"""Named distributed locks: redis-py's ``Lock``, behind the package's error boundary."""

from __future__ import annotations

from types import TracebackType

import redis
from redis.lock import Lock

from .errors import CacheUnavailable
from .redis_tier import REDIS_ERRORS, Client


class DistributedLock:
    """A lock held in Redis by one owner at a time, anywhere in the cluster.

    A thin wrapper over :class:`redis.lock.Lock` (token, ``SET NX PX``, Lua
    compare-and-delete) whose Redis errors become :class:`CacheUnavailable`; a lock
    cannot fail open, because pretending to hold it would break what it protects.
    """

    def __init__(
        self, client: Client, name: str, timeout: float, blocking_timeout: float | None
    ) -> None:
        self.name = name
        self._lock = Lock(client, name, timeout=timeout, blocking_timeout=blocking_timeout)

    def acquire(self, *, blocking: bool = True, blocking_timeout: float | None = None) -> bool:
        """Take the lock.

        :returns: True when taken; False when not taken within the blocking timeout.
        :raises CacheUnavailable: when Redis cannot be reached.
        """
        try:
            return bool(self._lock.acquire(blocking=blocking, blocking_timeout=blocking_timeout))
        except REDIS_ERRORS as exc:
            raise CacheUnavailable(f"lock {self.name!r}: {exc}") from exc

    def release(self) -> None:
        """Release the lock.

        :raises CacheUnavailable: when Redis cannot be reached.
        :raises redis.exceptions.LockNotOwnedError: when it expired and another owner took it.
        """
        try:
            self._lock.release()
        except redis.exceptions.LockError:
            raise
        except REDIS_ERRORS as exc:
            raise CacheUnavailable(f"lock {self.name!r}: {exc}") from exc

    def locked(self) -> bool:
        """Tell whether anyone holds the lock."""
        try:
            return self._lock.locked()
        except REDIS_ERRORS as exc:
            raise CacheUnavailable(f"lock {self.name!r}: {exc}") from exc

    def __enter__(self) -> DistributedLock:
        if not self.acquire():
            raise TimeoutError(f"lock {self.name!r} not acquired within its blocking timeout")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
