"""Limit strings: ``"10/second"``, ``"100 per minute"``, ``"5/10 seconds"``, joined by ``;``."""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from .._durations import MAX_SECONDS

STRATEGIES: Final = ("sliding-window-log", "sliding-window-counter", "fixed-window", "gcra")
MAX_AMOUNT: Final = 10**15
"""The largest amount a limit may allow: the scripts count in Lua numbers (doubles, exact
to 2**53) and Redis replies with 64-bit integers; 10**15 a period is beyond any use."""

_UNITS: Final = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
_LIMIT = re.compile(
    r"\s*(?P<amount>\d+)\s*(?:/|\s+per\s+)\s*(?P<multiple>\d+\s*)?"
    r"(?P<unit>second|minute|hour|day|month|year)s?\s*",
    # ASCII: in Unicode mode \d took Arabic-Indic digits and IGNORECASE matched a long s (U+017F)
    # to "s" in "second", a unit no table holds.
    re.IGNORECASE | re.ASCII,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """``amount`` requests per ``period`` seconds; ``text`` is how it was written."""

    amount: int
    period: int
    text: str

    def __str__(self) -> str:
        return self.text


def parse_limits(text: str) -> tuple[Limit, ...]:
    """Parse one limit string or several joined by ``;``.

    :raises ValueError: naming the part that does not parse.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected limits such as '10/second;1000/hour'")
    limits = []
    for part in text.split(";"):
        match = _LIMIT.fullmatch(part)
        if match is None:
            raise ValueError(f"cannot parse the limit {part.strip()!r}")
        amount = int(match["amount"])
        period = int(match["multiple"] or 1) * _UNITS[match["unit"].lower()]
        if amount < 1 or period < 1:
            raise ValueError(f"the limit {part.strip()!r} must allow at least 1 per period")
        if amount > MAX_AMOUNT or period > MAX_SECONDS:
            raise ValueError(
                f"the limit {part.strip()!r} is out of bounds: at most {MAX_AMOUNT} "
                f"per period, and a period of at most {MAX_SECONDS} seconds"
            )
        limits.append(Limit(amount, period, part.strip()))
    return check_distinct(tuple(limits))


LOG_MAX_AMOUNT: Final = 100_000
"""The largest amount a ``sliding-window-log`` limit takes. That strategy keeps an entry
per unit spent, so a client may hold up to ``amount`` of them, and one request adds
``cost`` of them in one script, while Redis serves nobody else (two million took three
seconds): a larger amount, or a byte quota, is for ``sliding-window-counter`` or
``gcra``, whose cost does not grow with it."""


def check_strategy(limits: tuple[Limit, ...], strategy: str) -> None:
    """Refuse limits that ``strategy`` cannot keep at a bounded cost.

    :raises ValueError: naming the limit and the strategies that can keep it.
    """
    if strategy != "sliding-window-log":
        return
    for limit in limits:
        if limit.amount > LOG_MAX_AMOUNT:
            raise ValueError(
                f"the limit {limit.text!r} is too large for sliding-window-log, which keeps "
                f"an entry per unit (at most {LOG_MAX_AMOUNT}): use sliding-window-counter "
                "or gcra"
            )


def check_distinct(limits: tuple[Limit, ...]) -> tuple[Limit, ...]:
    """Return ``limits``, checked to hold no amount and period twice (the two would share
    one counter, and one request would be counted twice on it).

    :raises ValueError: naming the limits that are the same.
    """
    seen: dict[tuple[int, int], Limit] = {}
    for limit in limits:
        same = seen.get((limit.amount, limit.period))
        if same is not None:
            raise ValueError(f"the limits {same.text!r} and {limit.text!r} are the same limit")
        seen[limit.amount, limit.period] = limit
    return limits
