"""Helpers for tests that build Flask apps with the extension."""

from __future__ import annotations

from flask import Flask

from tiered_cache import TieredCache
from tiered_cache.endpoints import publisher_of


def close_app(app: Flask) -> None:
    """Stop the app's stats publisher now (not at its next wake-up) and close its cache."""
    state = TieredCache.state(app)
    publisher = publisher_of(state)
    if publisher is not None:
        publisher.stop()
    state.cache.close()
