"""Redis rate limits (SPEC section 6), with no Flask: limits, strategies, the limiter.

``RateLimiter(cache)`` checks limits in the cache's Redis, one round trip per check;
:mod:`tiered_cache.limiting` puts it on Flask routes.
"""

from __future__ import annotations

from .decision import Decision as Decision
from .decision import LimitState as LimitState
from .deny_cache import DenyCache as DenyCache
from .limiter import RateLimiter as RateLimiter
from .limits import STRATEGIES as STRATEGIES
from .limits import Limit as Limit
from .limits import parse_limits as parse_limits

__all__ = [
    "STRATEGIES",
    "Decision",
    "DenyCache",
    "Limit",
    "LimitState",
    "RateLimiter",
    "parse_limits",
]
