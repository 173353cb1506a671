"""The bytes of one cached value in Redis: a fixed header, then the serialized payload.

Header (17 bytes, network order): magic ``b"\\x93tc"``, the serializer's tag, a flags
byte (reserved, 0), ``fresh_until`` as a float64 of wall-clock epoch seconds (0 when the
value never goes stale) and ``delta`` as a float32, the seconds the loader took (used by
early refresh). The magic makes foreign bytes a clean miss; the serializer tag makes a
value written with another serializer a miss instead of a wrong decode.

Counters written by :meth:`Cache.incr` are bare ASCII integers, as Redis keeps them;
they decode to ``int``.
"""

from __future__ import annotations

import re
import struct
from math import isnan
from typing import NamedTuple

from .errors import SerializationError

MAGIC = b"\x93tc"
_HEADER = struct.Struct("!3sBBdf")
HEADER_SIZE = _HEADER.size
_COUNTER = re.compile(rb"-?[0-9]{1,19}")


class Frame(NamedTuple):
    """A decoded header and the payload it precedes."""

    tag: int
    fresh_until: float
    delta: float
    payload: bytes


def pack(tag: int, fresh_until: float, delta: float, payload: bytes) -> bytes:
    """Return header + payload."""
    return _HEADER.pack(MAGIC, tag, 0, fresh_until, delta) + payload


def unpack(data: bytes) -> Frame:
    """Split stored bytes into header fields and payload.

    :raises SerializationError: when the bytes are not a frame of ours.
    """
    if len(data) < HEADER_SIZE or data[:3] != MAGIC:
        raise SerializationError(f"not a tiered_cache value ({len(data)} bytes)")
    _, tag, flags, fresh_until, delta = _HEADER.unpack_from(data)
    if flags != 0 or isnan(fresh_until) or isnan(delta):  # never written by us
        raise SerializationError("corrupt tiered_cache header")
    # tuple.__new__ skips NamedTuple's Python-level __new__: this runs on every L2 hit.
    return tuple.__new__(Frame, (tag, fresh_until, delta, data[HEADER_SIZE:]))


def counter_value(data: bytes) -> int | None:
    """Return the integer of a bare Redis counter, or None when ``data`` is not one."""
    return int(data) if _COUNTER.fullmatch(data) else None
