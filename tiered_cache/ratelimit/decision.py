"""What a rate-limit check decided: per-limit figures for headers, and the verdict."""

from __future__ import annotations

import dataclasses
import math

from .limits import Limit


@dataclasses.dataclass(frozen=True, slots=True)
class LimitState:
    """One limit's figures after a check.

    :ivar limit: the limit.
    :ivar remaining: units the client may still spend now.
    :ivar reset_after: seconds until the client has one unit more than ``remaining``
        (when ``remaining`` next goes up); 0 when nothing is spent.
    :ivar reset_at: the same moment as epoch seconds, by the Redis server's clock.
    """

    limit: Limit
    remaining: int
    reset_after: float
    reset_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`~tiered_cache.ratelimit.RateLimiter.hit` or ``status``.

    :ivar admitted: whether the request may go ahead.
    :ivar states: the figures of every limit checked, in the order given (empty when
        Redis could not be asked).
    :ivar retry_after: seconds until the same request could be admitted (0 if it is;
        ``math.inf`` when it never can be, its cost being more than a limit's amount).
    :ivar refused_by: the limit that refused (the one needing the longest wait), or None.
    :ivar available: False when Redis could not be asked: the verdict is then the
        configured fail-open or fail-closed answer, and there are no figures.
    :ivar local: True when this worker refused from its deny cache, without Redis.
    """

    admitted: bool
    states: tuple[LimitState, ...] = ()
    retry_after: float = 0.0
    refused_by: Limit | None = None
    available: bool = True
    local: bool = False

    @property
    def tightest(self) -> LimitState | None:
        """The most restrictive limit's figures: the refusing limit when refused, else
        the one with the fewest units left (the later reset on a tie); None without figures.
        """
        if not self.states:
            return None
        if self.refused_by is not None:
            for state in self.states:
                if state.limit == self.refused_by:
                    return state
        return min(self.states, key=lambda s: (s.remaining, -s.reset_after))

    @property
    def never(self) -> bool:
        """Whether the request can never be admitted (its cost is more than a limit's
        amount): there is no time to retry after."""
        return math.isinf(self.retry_after)

    @property
    def retry_after_seconds(self) -> int | None:
        """``retry_after`` for a ``Retry-After`` header: whole seconds, rounded up, >= 1;
        None when the request can never be admitted."""
        return None if self.never else max(1, math.ceil(self.retry_after))
