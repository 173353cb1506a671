"""Durations the library hands to Redis: checked where they are given, not where they fail.

A lifetime, lock or stale window becomes a ``PX`` in milliseconds, and a rate limit's
period microseconds in Lua's numbers (doubles, exact up to 2**53). Past a bound Redis
answers "value is not an integer or out of range", which used to surface as a raw
``ResponseError``, an outage, or garbage figures. :data:`MAX_SECONDS` is far beyond any
real use and far within both.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Final

MAX_SECONDS: Final = 100 * 365 * 86400
"""A hundred years: the longest timeout, stale window, lock or rate-limit period."""


def checked_seconds(name: str, value: Any, *, zero: bool = True) -> float:
    """``value``, a finite number of seconds: >= 0 (> 0 unless ``zero``), at most
    :data:`MAX_SECONDS`.

    :raises ValueError: naming ``name`` and the value.
    """
    number = math.nan
    if not isinstance(value, (bool, str, bytes)):  # a typo here, not a duration
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            number = float(value)  # int, float, numpy's, Decimal, Fraction
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if number < 0 or (number == 0 and not zero) or number > MAX_SECONDS:
        low = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be {low} and at most {MAX_SECONDS} seconds, not {value!r}")
    return number


__all__ = ["MAX_SECONDS", "checked_seconds"]
