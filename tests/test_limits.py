"""Limit strings (SPEC 6), parsed at configuration time."""

from __future__ import annotations

import pytest

from tiered_cache.config import ExtensionConfig
from tiered_cache.errors import ConfigurationError
from tiered_cache.ratelimit.limits import Limit, parse_limits


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/second", [(10, 1)]),
        ("100 per minute", [(100, 60)]),
        ("5/10 seconds", [(5, 10)]),
        ("10/second;1000/hour", [(10, 1), (1000, 3600)]),
        (" 2 per 3 days ; 7/Month", [(2, 3 * 86400), (7, 30 * 86400)]),
        ("1/year", [(1, 365 * 86400)]),
    ],
)
def test_limit_strings_parse(text: str, expected: list[tuple[int, int]]) -> None:
    limits = parse_limits(text)
    assert [(limit.amount, limit.period) for limit in limits] == expected
    assert all(isinstance(limit, Limit) and str(limit) for limit in limits)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ten/second",
        "10/fortnight",
        "10",
        "0/second",
        "10/0 s",
        "5;",
        "1000000000000001/second",  # beyond what the scripts count exactly
        "5/101 years",  # a period past MAX_SECONDS
        "5/10000000000000000 seconds",
        "\u0661\u0660/second",  # Arabic-Indic digits: int() reads them, the limit is ASCII
        "1/\u017fecond",  # a long s, which IGNORECASE matched to "s" (a KeyError followed)
        "1/minute\u00a0",
    ],
)
def test_bad_limit_strings_name_the_part(text: str) -> None:
    with pytest.raises(ValueError, match="limit"):
        parse_limits(text)


def test_extension_settings_validate_limits_and_strategies() -> None:
    config, cache = ExtensionConfig.resolve(
        {"endpoints": True, "prefix": "app"}, {"TIERED_CACHE_RATELIMIT_DEFAULT": "5/minute"}
    )
    assert config.endpoints and config.ratelimit_default == "5/minute"
    assert cache.prefix == "app"
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_RATELIMIT_DEFAULT"):
        ExtensionConfig.resolve({}, {"TIERED_CACHE_RATELIMIT_DEFAULT": "lots/second"})
    with pytest.raises(ConfigurationError, match="TIERED_CACHE_RATELIMIT_STRATEGY"):
        ExtensionConfig.resolve({}, {"TIERED_CACHE_RATELIMIT_STRATEGY": "leaky"})
    with pytest.raises(ConfigurationError, match="l1_max_itmes"):
        ExtensionConfig.resolve({"l1_max_itmes": 1}, {})
