"""Helpers for the rate-limit tests: counting what Redis executed, a clock tests move."""

from __future__ import annotations

from typing import Any

import redis

# Commands the test's own measuring connection sends (INFO), and those a new redis-py
# connection sends on connect: not the limiter's work.
_MEASURING = frozenset({"info", "client|setinfo", "hello", "ping"})


SCRIPT_COMMANDS = frozenset(
    {"time", "zcount", "zrangebyscore", "zremrangebyscore", "zadd", "pexpire", "get", "pttl"}
    | {"set", "incrby", "hmget", "hset", "hincrby"}
)
"""What the strategy scripts call inside Redis: ``INFO commandstats`` counts those too."""


def command_calls(client: redis.Redis) -> dict[str, int]:
    """``{command: calls}`` from ``INFO commandstats`` of the server ``client`` talks to."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


class CommandCounter:
    """What a server executed between :meth:`start` and :meth:`delta`, by command."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._before: dict[str, int] = {}

    def start(self) -> None:
        """Take the starting figures."""
        self._before = command_calls(self._client)

    def delta(self) -> dict[str, int]:
        """Calls per command since :meth:`start`, without the measuring ones."""
        after = command_calls(self._client)
        changed = {name: calls - self._before.get(name, 0) for name, calls in after.items()}
        return {name: n for name, n in changed.items() if n and name not in _MEASURING}

    def client_commands(self) -> dict[str, int]:
        """:meth:`delta` without what scripts ran inside Redis (EVALSHA itself stays)."""
        return {k: n for k, n in self.delta().items() if k not in SCRIPT_COMMANDS}

    def total(self) -> int:
        """All commands since :meth:`start`, without the measuring ones."""
        return sum(self.delta().values())


class CallCounter:
    """Counts the commands a redis-py client sends (its ``execute_command`` calls)."""

    def __init__(self, client: Any, monkeypatch: Any) -> None:
        self.calls: list[str] = []
        original = client.execute_command

        def counted(*args: Any, **options: Any) -> Any:
            self.calls.append(str(args[0]).lower())
            return original(*args, **options)

        monkeypatch.setattr(client, "execute_command", counted)


class ManualTimer:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds
