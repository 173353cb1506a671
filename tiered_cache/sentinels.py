"""``MISS``: the value of a lookup that found nothing, so that ``None`` can be cached."""

from __future__ import annotations

import enum
from typing import Final


class Miss(enum.Enum):
    """The type of :data:`MISS`."""

    MISS = "MISS"

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = Miss.MISS
