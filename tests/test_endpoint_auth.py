"""The bearer-token challenge of ``/_tiered_cache/*`` (RFC 6750 section 3)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from werkzeug.datastructures import WWWAuthenticate

from tests.flask_apps import close_app
from tiered_cache.flask_ext import TieredCache

TOKEN = "s3cret"
PATH = "/_tiered_cache/stats"


@pytest.fixture
def app(redis_url: str) -> Iterator[Flask]:
    app = Flask("auth")
    app.config.update(
        TIERED_CACHE_REDIS_URL=redis_url,
        TIERED_CACHE_ENDPOINTS=True,
        TIERED_CACHE_ENDPOINTS_TOKEN=TOKEN,
    )
    TieredCache(app)
    yield app
    close_app(app)


def challenge(app: Flask, headers: dict[str, str]) -> WWWAuthenticate:
    response = app.test_client().get(PATH, headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized"}
    found = WWWAuthenticate.from_header(response.headers["WWW-Authenticate"])
    assert found is not None
    assert found.type == "bearer"
    assert found.parameters["realm"] == "tiered_cache"
    return found


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic czNjcmV0"}, {"Authorization": "Bearer"}],
    ids=["no header", "another scheme", "empty bearer"],
)
def test_no_token_gets_a_challenge_without_an_error_code(
    app: Flask, headers: dict[str, str]
) -> None:
    """RFC 6750 3.1: a request without authentication gets no error code, and
    invalid_request would go with a 400, not a 401."""
    assert "error" not in challenge(app, headers).parameters


def test_a_wrong_token_is_an_invalid_token(app: Flask) -> None:
    found = challenge(app, {"Authorization": "Bearer wrong"})
    assert found.parameters["error"] == "invalid_token"


def test_the_right_token_passes(app: Flask) -> None:
    response = app.test_client().get(PATH, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert "WWW-Authenticate" not in response.headers
