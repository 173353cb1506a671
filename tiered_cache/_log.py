"""A logger that says each kind of trouble at most once per interval, with a count."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("tiered_cache")


class RateLimitedLog:
    """Warn about recurring trouble without flooding the log.

    Each ``kind`` is logged at most once per ``interval`` seconds; the next message says
    how many were held back. Counting is exact even when logging is suppressed.
    """

    def __init__(self, interval: float = 10.0, timer: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._timer = timer
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def after_fork(self) -> None:
        """Replace the lock, which another thread may have held when the process forked."""
        self._lock = threading.Lock()

    def warning(
        self, kind: str, message: str, *args: object, exc: BaseException | None = None
    ) -> None:
        """Count one ``kind`` of trouble and log it unless it was logged recently."""
        now = self._timer()
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        suffix = f" ({held} more like this not logged)" if held else ""
        logger.warning(message + suffix, *args, exc_info=exc)
