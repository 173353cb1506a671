"""Serializers: exact round trips, and hostile bytes are a SerializationError, never code."""

from __future__ import annotations

import contextlib
import hmac
import os
import pickle
import random
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tiered_cache.errors import ConfigurationError, SerializationError
from tiered_cache.serializers import SERIALIZER_NAMES, Serializer, make_serializer

SECRET = "s3cret-for-tests"

# Set by _mark(), which a hostile pickle asks the unpickler to call.
EXECUTED: list[str] = []


def _mark(what: str) -> None:
    EXECUTED.append(what)


class CallsMark:
    """Unpickling this calls _mark(): stands in for any code a pickle can run."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_mark, ("ran",))


class CallsSystem:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def _no_marks() -> None:
    EXECUTED.clear()


@pytest.fixture(params=SERIALIZER_NAMES)
def ser(request: pytest.FixtureRequest) -> Serializer:
    return make_serializer(request.param, secret_key=SECRET)


PORTABLE = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    1.5,
    "",
    "héllo wörld ☃ 𝄞",
    [],
    {},
    [1, "two", 3.0, None, False],
    {"id": 1, "name": "Widget", "price": 9.99, "tags": ["a", "b"], "meta": {"x": [1, {"y": None}]}},
]


@pytest.mark.parametrize("value", PORTABLE, ids=repr)
def test_round_trip(ser: Serializer, value: Any) -> None:
    data = ser.dumps(value)
    assert isinstance(data, bytes)
    assert ser.loads(data) == value


def test_names_and_tags() -> None:
    tags = {name: make_serializer(name, secret_key=SECRET).tag for name in SERIALIZER_NAMES}
    assert tags == {"json": 1, "msgpack": 2, "pickle": 3}
    for name in SERIALIZER_NAMES:
        assert make_serializer(name, secret_key=SECRET).name == name


def test_json_is_compact_utf8() -> None:
    data = make_serializer("json").dumps({"a": [1, 2], "b": "é"})
    assert data == '{"a":[1,2],"b":"é"}'.encode()


def test_msgpack_keeps_bytes_and_str_apart() -> None:
    ser = make_serializer("msgpack")
    assert ser.loads(ser.dumps({"s": "x", "b": b"x", 1: 2})) == {"s": "x", "b": b"x", 1: 2}


def test_pickle_round_trips_python_types() -> None:
    ser = make_serializer("pickle", secret_key=b"bytes-key")
    value = {(1, 2): {3, 4}, "f": frozenset({"x"}), "b": bytearray(b"yz")}
    assert ser.loads(ser.dumps(value)) == value


def _garbage() -> list[bytes]:
    rng = random.Random(1234)
    return [b"", b"\x00", b"\xff" * 7] + [rng.randbytes(n) for n in (1, 5, 31, 32, 33, 200)]


@pytest.mark.parametrize("name", ["json", "pickle"])
@pytest.mark.parametrize("data", _garbage(), ids=lambda d: f"{len(d)}b")
def test_garbage_is_refused(name: str, data: bytes) -> None:
    # Not msgpack: almost any short byte string is a valid msgpack value (b"\x00" is 0).
    with pytest.raises(SerializationError):
        make_serializer(name, secret_key=SECRET).loads(data)


def test_fuzzed_input_raises_nothing_but_serialization_error(ser: Serializer) -> None:
    rng = random.Random(99)
    valid = ser.dumps({"id": 7, "name": "Widget", "tags": ["a", "b"], "price": 1.25})
    inputs = [rng.randbytes(rng.randrange(64)) for _ in range(1000)]
    for _ in range(1000):
        flipped = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        inputs.append(bytes(flipped))
    for data in inputs:
        with contextlib.suppress(SerializationError):
            ser.loads(data)


def test_truncated_input_is_refused(ser: Serializer) -> None:
    data = ser.dumps({"key": ["value", 1, 2.5, {"deep": "x" * 40}]})
    for cut in range(len(data)):
        with pytest.raises(SerializationError):
            ser.loads(data[:cut])


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": ',
        b"[" * 100_000,  # deeper than the stack
        b'"\xff\xfe"',  # not UTF-8
        '"x"'.encode("utf-16"),  # json.loads(bytes) would accept it; UTF-8 only here
        b"1" * 5000,  # beyond the int-digits limit
        b"{} []",
    ],
    ids=["cut", "deep", "latin", "utf16", "bigint", "two-docs"],
)
def test_json_refuses_malformed(data: bytes) -> None:
    with pytest.raises(SerializationError):
        make_serializer("json").loads(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\x91\x01\x02",  # a map whose key is an array: unhashable
        b"\xc1",  # the one reserved byte
        b"\xd9\x02\xff\xfe",  # a str that is not UTF-8
        b"\x01\x02",  # trailing data
        b'{"a": 1}',  # json fed to msgpack
    ],
    ids=["unhashable", "reserved", "latin", "trailing", "json"],
)
def test_msgpack_refuses_malformed(data: bytes) -> None:
    with pytest.raises(SerializationError):
        make_serializer("msgpack").loads(data)


def test_foreign_formats_are_refused() -> None:
    json_ser, msgpack_ser = make_serializer("json"), make_serializer("msgpack")
    pickle_ser = make_serializer("pickle", secret_key=SECRET)
    with pytest.raises(SerializationError):
        json_ser.loads(msgpack_ser.dumps({"a": [1, 2]}))
    with pytest.raises(SerializationError):
        json_ser.loads(pickle_ser.dumps({"a": 1}))
    with pytest.raises(SerializationError):
        pickle_ser.loads(json_ser.dumps({"a": 1}))


def _hostile_payloads(marker: Path) -> list[bytes]:
    signed_elsewhere = make_serializer("pickle", secret_key="another key")
    good = make_serializer("pickle", secret_key=SECRET).dumps(CallsMark())
    tampered = bytearray(good)
    tampered[-2] ^= 0x01
    payloads = []
    for evil in (CallsMark(), CallsSystem(marker)):
        body = pickle.dumps(evil, protocol=5)
        payloads += [
            body,  # unsigned
            bytes(32) + body,  # a zero "signature"
            os.urandom(32) + body,
            signed_elsewhere.dumps(evil),  # signed with another key
            hmac.digest(SECRET.encode(), body, "sha256") + body,  # the raw secret, underived
        ]
    return [*payloads, bytes(tampered), good[:31], good[32:]]


def test_unsigned_or_wrongly_signed_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ser = make_serializer("pickle", secret_key=SECRET)
    for data in _hostile_payloads(marker):
        with pytest.raises(SerializationError):
            ser.loads(data)
    assert EXECUTED == []
    assert not marker.exists()


def test_signature_is_checked_before_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    ser = make_serializer("pickle", secret_key=SECRET)
    with pytest.raises(SerializationError, match="signature"):
        ser.loads(pickle.dumps({"a": 1}) + bytes(40))
    with pytest.raises(SerializationError):
        ser.loads(b"short")
    assert calls == []


def test_a_correctly_signed_pickle_is_trusted() -> None:
    # The control for the test above: the hostile payloads would run if they were signed.
    ser = make_serializer("pickle", secret_key=SECRET)
    ser.loads(ser.dumps(CallsMark()))
    assert EXECUTED == ["ran"]


def test_signed_pickle_of_a_vanished_class_is_a_decode_error() -> None:
    ser = make_serializer("pickle", secret_key=SECRET)
    data = ser.dumps(CallsMark())
    data = data.replace(b"_mark", b"_gone")  # resign: the class was renamed in a deploy
    body = data[32:]
    key = hmac.digest(SECRET.encode(), b"tiered_cache.pickle.v1", "sha256")
    with pytest.raises(SerializationError) as info:
        ser.loads(hmac.digest(key, body, "sha256") + body)
    assert isinstance(info.value.__cause__, AttributeError)


class Opaque:
    pass


@pytest.mark.parametrize(
    ("name", "value", "type_name"),
    [
        ("json", {"a": {1, 2}}, "set"),
        ("json", Opaque(), "Opaque"),
        ("json", b"bytes", "bytes"),
        ("json", "\ud800", "str"),  # a lone surrogate has no UTF-8 form
        ("msgpack", {"a": Opaque()}, "Opaque"),
        ("msgpack", 2**70, "int"),
        ("pickle", {"lock": threading.Lock()}, "lock"),
        ("pickle", lambda: None, "function"),
    ],
)
def test_unencodable_values_name_their_type(name: str, value: Any, type_name: str) -> None:
    ser = make_serializer(name, secret_key=SECRET)
    with pytest.raises(SerializationError, match=type_name):
        ser.dumps(value)


def test_circular_values_are_unencodable() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for name in ("json", "msgpack"):
        with pytest.raises(SerializationError, match="list"):
            make_serializer(name).dumps(loop)


def test_unknown_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_SERIALIZER") as info:
        make_serializer("yaml")
    assert info.value.key == "TIERED_CACHE_SERIALIZER"
    assert info.value.value == "yaml"
    assert "json, msgpack, pickle" in str(info.value)


@pytest.mark.parametrize("key", [None, "", b""])
def test_pickle_needs_a_secret_key(key: str | bytes | None) -> None:
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_SECRET_KEY"):
        make_serializer("pickle", secret_key=key)


def test_missing_msgpack_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # makes `import msgpack` fail
    with pytest.raises(ConfigurationError, match=r"tiered-cache\[msgpack\]") as info:
        make_serializer("msgpack")
    assert info.value.key == "TIERED_CACHE_SERIALIZER"
