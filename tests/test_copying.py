"""Copy-on-read: a copy handed out never shares a mutable part with the cached value."""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import json
import uuid
from collections import OrderedDict
from typing import Any

import pytest

from tiered_cache.copying import copier_for


class Color(enum.Enum):
    RED = 1


IMMUTABLE = [
    None,
    True,
    7,
    2**100,
    1.5,
    2j,
    "text",
    b"bytes",
    (),
    (1, "a", (2.0, None, (b"x",))),
    frozenset({1, "a", (2, 3)}),
    decimal.Decimal("1.10"),
    datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    uuid.UUID(int=5),
    Color.RED,
    range(3),
]


@pytest.mark.parametrize("value", IMMUTABLE, ids=repr)
def test_immutables_are_shared(value: Any) -> None:
    assert copier_for(value) is None


class Str(str):
    """A str subclass can carry mutable attributes, so it is not treated as immutable."""


@pytest.mark.parametrize(
    "value",
    [[1], {"a": 1}, (1, [2]), frozenset({(1, 2)}) | {Str("s")}, Str("s"), bytearray(b"x")],
    ids=repr,
)
def test_mutable_values_get_a_copier(value: Any) -> None:
    assert copier_for(value) is not None


def _mutate_everything(value: Any) -> None:
    """Change every container reachable from ``value``."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _mutate_everything(item)
        value["__added__"] = 1
    elif isinstance(value, list):
        for item in value:
            _mutate_everything(item)
        value.append("__added__")
    elif isinstance(value, tuple):
        for item in value:
            _mutate_everything(item)
    elif isinstance(value, set):
        value.add("__added__")
    elif hasattr(value, "__dict__"):
        value.__dict__["__added__"] = 1


class Box:
    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]


def _product(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "name": f"Widget {n}",
        "price": 9.99,
        "in_stock": True,
        "discontinued": None,
        "tags": ["a", "b"],
        "dims": {"w": 1, "h": [2, 3], "deeper": [{"x": [4]}]},
    }


TREES: list[Any] = [
    [],
    {},
    [1, 2, 3],
    {"a": 1, "b": "two"},
    _product(1),
    [_product(n) for n in range(5)],
    [1, [2, [3, [4]]], {"k": [5]}, "leaf", None],  # mixed items
    [[1], [2, 3], [], [4]],  # like lists
    [{"a": [1]}, {"b": [2]}, {"a": [3]}],  # two shapes
    {(1, 2): [3], 4: {"five": [6]}},  # non-string immutable keys
    json.loads(json.dumps({"items": [_product(n) for n in range(3)], "total": 3})),
]

OTHER: list[Any] = [
    {"s": {1, 2}},
    ({"a": [1]}, 2),
    OrderedDict(a=[1]),
    Box([1, 2]),
    {"box": Box([3])},
]


@pytest.mark.parametrize("value", TREES + OTHER, ids=repr)
def test_mutating_a_copy_never_changes_the_original(value: Any) -> None:
    before = copy.deepcopy(value)
    copier = copier_for(value)
    assert copier is not None
    first = copier(value)
    assert first == value
    _mutate_everything(first)
    assert value == before
    second = copier(value)  # copies stay independent of each other, too
    assert second == before
    _mutate_everything(second)
    assert value == before


@pytest.mark.parametrize("value", TREES, ids=repr)
def test_trees_get_a_planned_copier(value: Any) -> None:
    assert copier_for(value) is not copy.deepcopy


@pytest.mark.parametrize("value", OTHER, ids=repr)
def test_other_values_fall_back_to_deepcopy(value: Any) -> None:
    assert copier_for(value) is copy.deepcopy


def test_containers_of_leaves_use_the_builtin_copy() -> None:
    assert copier_for({"a": 1, "b": (2, 3)}) is dict.copy
    assert copier_for(["a", 1, None]) is list.copy


def test_like_items_share_one_plan() -> None:
    copier = copier_for([_product(n) for n in range(200)])
    assert copier is not None
    assert copier.__closure__ is not None
    # One copier mapped over all items, not one closure per item.
    assert len(copier.__closure__) == 1


def test_shared_references_keep_their_aliasing() -> None:
    shared = [1, 2]
    value = {"a": shared, "b": shared}
    copier = copier_for(value)
    assert copier is copy.deepcopy
    result = copier(value)
    assert result["a"] is result["b"]
    assert result["a"] is not shared


def test_cycles_fall_back_to_deepcopy() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    copier = copier_for(loop)
    assert copier is copy.deepcopy
    result = copier(loop)
    assert result[1] is result
    assert result is not loop


def test_deep_nesting_does_not_raise() -> None:
    value: list[Any] = []
    node = value
    for _ in range(5000):
        child: list[Any] = []
        node.append(child)
        node = child
    copier = copier_for(value)  # too deep to plan: no RecursionError here
    assert copier is not None
    copied = copier(value)  # nor here, where deepcopy would raise one
    node, twin = value, copied
    for depth in range(5001):  # the same shape, and no list shared
        assert type(twin) is list and twin is not node, depth
        assert len(twin) == len(node) == (0 if depth == 5000 else 1), depth
        if twin:
            node, twin = node[0], twin[0]
    copied_node = copied
    for _ in range(4999):
        copied_node = copied_node[0]
    copied_node[0].append("changed")
    assert node == []  # the original's innermost list


def test_deep_trees_keep_their_leaves_and_keys() -> None:
    value: dict[str, Any] = {}
    node = value
    for i in range(3000):
        node["i"] = i
        node["leaf"] = (i, "x") if i % 2 else {i: [None, 1.5]}
        node["next"] = node = {}
    copier = copier_for(value)
    assert copier is not None
    copied = copier(value)
    original, twin = value, copied
    for i in range(3000):
        assert twin["i"] == i and twin["leaf"] == original["leaf"]
        if not i % 2:
            assert twin["leaf"] is not original["leaf"]
        original, twin = original["next"], twin["next"]
    assert twin == {} and twin is not original
