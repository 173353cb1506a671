"""Faults injected into one kind of call of ours; everything else talks to a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tiered_cache import versions


def fail_version_reads(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """Make the next ``times`` reads of a namespace version fail as a reset connection
    would, while every other call (and the reads after them) reach Redis."""
    left = [times]
    real_read_counter = versions.read_counter

    def flaky(client: Any, counter: str, *rest: Any) -> Any:
        if left[0]:
            left[0] -= 1
            raise redis.ConnectionError("connection reset by peer")
        return real_read_counter(client, counter, *rest)

    monkeypatch.setattr(versions, "read_counter", flaky)
