"""One value as L2 holds it: the serializer's bytes in a frame, and the way back.

Writing serializes once and, for anything but a scalar, decodes those very bytes for
this process's L1, so L1 holds what every other worker will decode from Redis, never the
caller's object (which the caller may go on changing). Reading turns whatever Redis
returns into a value or a miss: foreign bytes, a frame from another serializer and a
payload that does not decode are all misses, counted and logged at a bounded rate,
never errors (SPEC: bad bytes in Redis are a miss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from redis import ResponseError

from ._log import RateLimitedLog
from .errors import SerializationError
from .framing import Frame, counter_value, pack, unpack
from .redis_tier import UNAVAILABLE, Unavailable
from .sentinels import MISS, Miss
from .serializers import Serializer

_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
COUNTER: Final = 0
"""The tag of a counter's frame (``incr``'s bare integer); serializers' tags start at 1."""


class StoredValues:
    """Encodes values for Redis and decodes what Redis returns, counting what did not.

    :param clock: wall-clock seconds; ``fresh_until`` is an epoch time so that every
        host agrees on it.
    """

    def __init__(
        self, serializer: Serializer, clock: Callable[[], float], log: RateLimitedLog
    ) -> None:
        self._serializer = serializer
        self._clock = clock
        self._log = log
        self.decode_errors = 0

    def encode(self, value: Any, ttl: float, delta: float) -> tuple[bytes, Any, float]:
        """Encode ``value`` living ``ttl`` seconds (0: for ever), which took ``delta`` to load.

        :returns: the bytes to store, the value L1 may hold, and ``fresh_until``.
        """
        serializer = self._serializer
        payload = serializer.dumps(value)
        fresh_until = self._clock() + ttl if ttl else 0.0
        held = value if type(value) in _SCALARS else serializer.loads(payload)
        return pack(serializer.tag, fresh_until, delta, payload), held, fresh_until

    def decode(
        self, gkey: str, raw: bytes | ResponseError | Unavailable | None
    ) -> tuple[Frame, Any] | Miss:
        """Decode a GET reply; no value, no Redis, or bytes that do not decode: MISS.

        A bare integer is a counter written by ``incr``: it decodes to an ``int`` that
        never goes stale.
        """
        if raw is None or raw is UNAVAILABLE:
            return MISS
        if isinstance(raw, ResponseError):  # GET of a list, a hash...
            return self._undecodable("%s is not a string (%s); treated as a miss", gkey, raw)
        try:
            frame = unpack(raw)
            if frame.tag != self._serializer.tag:
                raise SerializationError(f"written with serializer tag {frame.tag}")
            return frame, self._serializer.loads(frame.payload)
        except SerializationError as exc:
            number = counter_value(raw)
            if number is not None:
                return Frame(COUNTER, 0.0, 0.0, raw), number
            return self._undecodable("undecodable value at %s (%s); treated as a miss", gkey, exc)

    def _undecodable(self, message: str, gkey: str, why: object) -> Miss:
        self.decode_errors += 1
        self._log.warning("decode", message, gkey, why)
        return MISS


def expired(frame: Frame, now: float) -> bool:
    """True when ``frame`` has a ``fresh_until`` and ``now`` (epoch seconds) has reached it."""
    return bool(frame.fresh_until) and now >= frame.fresh_until
