"""The Lua scripts of the strategies: read from package data, one per strategy.

Each strategy file (``scripts/<strategy>.lua``) defines how one limit is inspected and
spent; ``scripts/_driver.lua`` is the part they share (server time, all-or-nothing over
several limits, the reply). A strategy's script is the driver, the strategy and the call
that joins them, sent as one script: its KEYS and ARGV are documented in the driver.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Final

from .limits import STRATEGIES

FILES: Final = {strategy: strategy.replace("-", "_") + ".lua" for strategy in STRATEGIES}
_DRIVER: Final = "_driver.lua"


def _read(name: str) -> str:
    return (resources.files(__package__) / "scripts" / name).read_text(encoding="utf-8")


@functools.cache
def source(strategy: str) -> str:
    """The whole script of ``strategy``.

    :raises ValueError: naming an unknown strategy.
    """
    if strategy not in FILES:
        raise ValueError(f"unknown rate limit strategy {strategy!r}: expected one of {STRATEGIES}")
    return "\n".join([_read(_DRIVER), _read(FILES[strategy]), "return check(inspect, commit)\n"])


def register(client: Any) -> dict[str, Any]:
    """One redis-py ``Script`` per strategy for ``client``.

    A ``Script`` sends ``EVALSHA`` (one command) and, on a ``NOSCRIPT`` reply (first use,
    a restarted or failed-over server), loads the script and sends it again.
    """
    return {strategy: client.register_script(source(strategy)) for strategy in STRATEGIES}
