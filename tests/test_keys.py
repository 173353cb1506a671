"""The Redis key layout and the hashing of unsafe keys."""

from __future__ import annotations

import pytest

from tiered_cache.keys import KeyLayout, encode_key, encode_name


def test_layout_is_prefix_version_namespace_version_key() -> None:
    layout = KeyLayout("tc", 3)
    assert layout.data("", 0, "user:1") == "tc:3::0:user:1"
    assert layout.data("users", 7, "1") == "tc:3:users:7:1"
    assert layout.counter("users") == "tc:3:#ns:users"
    assert layout.channel == "tc:3:#bus"
    assert KeyLayout.flight_lock("tc:3::0:k") == "tc:3::0:k#lock"
    assert layout.kept_by_clear(b"tc:3:#ns:users")
    assert layout.kept_by_clear("tc:3:#stats:host:1:ab")
    assert not layout.kept_by_clear(b"tc:3::0:#ns:users")


@pytest.mark.parametrize("key", ["a", "user:1", "path/to.x", "A-Z_0-9=+,@"])
def test_safe_short_keys_are_kept(key: str) -> None:
    assert encode_key(key) == key


@pytest.mark.parametrize("key", ["", " ", "a b", "x" * 201, "{slot}", "é", "#abc", "a\nb", "*"])
def test_other_keys_are_hashed_and_cannot_collide_with_plain_ones(key: str) -> None:
    encoded = encode_key(key)
    if key == "*":  # '*' is safe: SCAN patterns are built from the prefix, not from keys
        assert encoded == "*"
        return
    assert encoded.startswith("#")
    assert len(encoded) == 41
    assert encode_key(key) == encoded  # stable across calls and processes


def test_a_key_that_looks_like_a_digest_is_hashed_itself() -> None:
    digest = encode_key("a b")
    assert encode_key(digest) != digest


def test_namespace_names_cannot_contain_colons() -> None:
    assert encode_name("users") == "users"
    assert encode_name("a:b").startswith("#")
    with pytest.raises(ValueError, match="non-empty"):
        encode_name("")


def test_scan_pattern_escapes_glob_characters() -> None:
    assert KeyLayout("t[1]", 1).scan_pattern == "t\\[1\\]:1:*"
    assert KeyLayout("a\\b?*", 1).scan_pattern == "a\\\\b\\?\\*:1:*"
