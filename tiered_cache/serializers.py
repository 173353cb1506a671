"""Value <-> bytes for the Redis tier: json, msgpack, or HMAC-signed pickle behind one interface.

Whatever is stored in Redis under our keys may have been written by someone else (another
version of the app, another program, an attacker with access to Redis), so :meth:`Serializer.loads`
treats its input as untrusted: any input it cannot decode raises :class:`SerializationError`
and nothing else, which the cache turns into a miss and a warning. No serializer ever runs
code from the bytes it decodes; pickle is offered only signed with HMAC-SHA256, and the
signature is checked before the pickle machinery sees a single byte.

Round trips are exact for each format's own types only: json turns tuples into lists and
non-string dict keys into strings; msgpack turns tuples into lists. Callers that need
other types use pickle (with a secret key) or convert on the way in.

A pickle signature covers the value, not the Redis key it is stored under: whoever can
write to Redis can copy one signed entry over another key. That swaps two of our own
values; it cannot make the process run foreign code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from collections.abc import Callable
from typing import Any, Final, Protocol

from .errors import ConfigurationError, SerializationError

__all__ = ["SERIALIZER_NAMES", "Serializer", "make_serializer"]

#: The accepted values of ``TIERED_CACHE_SERIALIZER``, default first.
SERIALIZER_NAMES: Final = ("json", "msgpack", "pickle")

# Domain-separation label: the HMAC key is derived from the secret so that a Flask
# SECRET_KEY, which also signs session cookies, is never used raw for a second purpose.
_PICKLE_KEY_LABEL: Final = b"tiered_cache.pickle.v1"
_DIGEST_SIZE: Final = hashlib.sha256().digest_size

# One encoder for every call: json.dumps() with non-default options builds a new
# JSONEncoder each time. encode() keeps no state between calls, so sharing it is safe.
_json_encode: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# raw_decode skips json.loads's whitespace regex on both ends: what we write has none.
_json_raw_decode: Final = json.JSONDecoder().raw_decode


class Serializer(Protocol):
    """Encodes values to bytes for Redis and decodes them back.

    ``name`` is the configured name (``"json"``, ``"msgpack"`` or ``"pickle"``) and ``tag``
    the one-byte id stored in every entry frame (json=1, msgpack=2, pickle=3), so bytes
    written by one serializer are never decoded by another.
    """

    name: str
    tag: int

    def dumps(self, value: Any) -> bytes:
        """Encode a value.

        :param value: the object to store.
        :returns: its encoding.
        :raises SerializationError: the value (or something inside it) cannot be encoded;
            the message names its type.
        """
        ...

    def loads(self, data: bytes) -> Any:
        """Decode bytes read from Redis, which may be foreign, truncated or tampered with.

        :param data: the encoded value.
        :returns: the decoded object.
        :raises SerializationError: the bytes cannot be decoded (never any other exception,
            and never by running code the bytes name).
        """
        ...


def _encode_error(fmt: str, value: Any, exc: BaseException) -> SerializationError:
    """Build the error for a value that ``fmt`` cannot encode, naming its type."""
    return SerializationError(f"cannot encode {type(value).__qualname__} value as {fmt}: {exc}")


def _decode_error(fmt: str, data: bytes, exc: BaseException | None) -> SerializationError:
    """Build the error for bytes that ``fmt`` cannot decode."""
    detail = f": {exc}" if exc is not None else ""
    return SerializationError(f"cannot decode {len(data)} bytes as {fmt}{detail}")


class _JsonSerializer:
    """Compact UTF-8 JSON."""

    name = "json"
    tag = 1

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as compact JSON text in UTF-8."""
        try:
            return _json_encode(value).encode("utf-8")
        # TypeError: unsupported type; ValueError: circular reference, or a lone surrogate
        # that UTF-8 cannot carry; RecursionError: nesting deeper than the stack.
        except (TypeError, ValueError, RecursionError) as exc:
            raise _encode_error("json", value, exc) from exc

    def loads(self, data: bytes) -> Any:
        """Decode UTF-8 JSON."""
        try:
            # Decode as UTF-8 ourselves: json.loads(bytes) would also guess UTF-16/32.
            text = data.decode("utf-8")
            try:
                value, end = _json_raw_decode(text)
                if end == len(text):
                    return value
            except ValueError:
                pass
            return json.loads(text)  # anything else: the strict, general path decides
        # UnicodeDecodeError and JSONDecodeError are ValueErrors, as is the int-digits limit;
        # TypeError covers a non-bytes argument.
        except (ValueError, TypeError, RecursionError) as exc:
            raise _decode_error("json", data, exc) from exc


class _MsgpackSerializer:
    """MessagePack, with str and bytes kept apart."""

    name = "msgpack"
    tag = 2

    def __init__(self, packb: Callable[..., bytes], unpackb: Callable[..., Any]) -> None:
        self._packb = packb
        self._unpackb = unpackb

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as MessagePack."""
        try:
            return self._packb(value, use_bin_type=True)
        # TypeError: unsupported type; ValueError: too deep or a lone surrogate;
        # OverflowError: an int wider than 64 bits.
        except (TypeError, ValueError, OverflowError) as exc:
            raise _encode_error("msgpack", value, exc) from exc

    def loads(self, data: bytes) -> Any:
        """Decode exactly one MessagePack object; trailing bytes are an error."""
        try:
            return self._unpackb(data, raw=False, strict_map_key=False)
        # The C unpacker raises a wide, version-dependent set (ValueError subclasses such as
        # ExtraData and FormatError, TypeError for an unhashable map key, ...); every one of
        # them means "not our bytes", which the contract turns into SerializationError.
        except Exception as exc:
            raise _decode_error("msgpack", data, exc) from exc


class _SignedPickleSerializer:
    """Pickle (protocol 5) behind an HMAC-SHA256 signature: ``digest || pickle``."""

    name = "pickle"
    tag = 3

    def __init__(self, secret_key: bytes) -> None:
        self._key = hmac.digest(secret_key, _PICKLE_KEY_LABEL, "sha256")

    def dumps(self, value: Any) -> bytes:
        """Pickle ``value`` and prefix the signature."""
        try:
            body = pickle.dumps(value, protocol=5)
        # A value's own __reduce__/__getstate__ may raise anything; all of it means
        # "cannot be stored", and the original stays visible as __cause__.
        except Exception as exc:
            raise _encode_error("pickle", value, exc) from exc
        return hmac.digest(self._key, body, "sha256") + body

    def loads(self, data: bytes) -> Any:
        """Verify the signature, then unpickle; unsigned or tampered bytes never reach pickle."""
        if len(data) < _DIGEST_SIZE:
            raise _decode_error("signed pickle", data, None)
        view = memoryview(data)
        body = view[_DIGEST_SIZE:]
        if not hmac.compare_digest(view[:_DIGEST_SIZE], hmac.digest(self._key, body, "sha256")):
            raise SerializationError(
                f"refusing {len(data)} bytes: missing or invalid pickle signature"
            )
        try:
            return pickle.loads(body)
        # Signed by us, so not hostile; but a class renamed or removed since it was stored
        # makes old entries undecodable (ImportError, AttributeError, ...): that is a miss.
        except Exception as exc:
            raise _decode_error("signed pickle", data, exc) from exc


def _make_msgpack() -> Serializer:
    """Import msgpack (an optional extra) and wrap it."""
    try:
        import msgpack  # an optional extra: imported only when configured
    except ImportError as exc:
        raise ConfigurationError(
            "TIERED_CACHE_SERIALIZER",
            "msgpack",
            "needs the msgpack extra: pip install 'tiered-cache[msgpack]'",
        ) from exc
    return _MsgpackSerializer(msgpack.packb, msgpack.unpackb)


def _make_pickle(secret_key: str | bytes | None) -> Serializer:
    """Build the signed pickle serializer, refusing to run without a key."""
    if not secret_key:
        raise ConfigurationError(
            "TIERED_CACHE_SECRET_KEY",
            secret_key,
            "the pickle serializer needs a secret key (TIERED_CACHE_SECRET_KEY or SECRET_KEY) "
            "to sign what it stores",
        )
    key = secret_key.encode("utf-8") if isinstance(secret_key, str) else secret_key
    return _SignedPickleSerializer(key)


def make_serializer(name: str, *, secret_key: str | bytes | None = None) -> Serializer:
    """Return the serializer called ``name``.

    :param name: ``"json"``, ``"msgpack"`` or ``"pickle"``.
    :param secret_key: the key that signs pickles; required for ``"pickle"``, ignored
        otherwise. The HMAC key is derived from it, so the same secret can safely sign
        session cookies too.
    :returns: a serializer; instances keep no per-call state and are safe to share
        between threads.
    :raises ConfigurationError: ``name`` is unknown (names ``TIERED_CACHE_SERIALIZER``),
        msgpack is not installed, or pickle was asked for without a secret key (names
        ``TIERED_CACHE_SECRET_KEY``).
    """
    if name == "json":
        return _JsonSerializer()
    if name == "msgpack":
        return _make_msgpack()
    if name == "pickle":
        return _make_pickle(secret_key)
    raise ConfigurationError(
        "TIERED_CACHE_SERIALIZER", name, "expected one of " + ", ".join(SERIALIZER_NAMES)
    )
