"""``/_tiered_cache/{health,stats,metrics}`` and the per-worker stats publisher.

The publisher (:class:`~tiered_cache.metrics.StatsPublisher`) is set up for every app,
endpoints or not, because ``flask tiered-cache stats`` reads what workers publish; it
starts on the first request a worker process serves. The endpoints exist only when
``TIERED_CACHE_ENDPOINTS`` is on, behind ``Authorization: Bearer <token>`` when
``TIERED_CACHE_ENDPOINTS_TOKEN`` is set. Their responses are ``no-store``, and none of
them waits on Redis for more than about one socket timeout: they go through the cache's
error boundary, so an open breaker answers at once.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any, Final

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import HTTPException, Unauthorized

from . import metrics
from .errors import CacheUnavailable

if TYPE_CHECKING:
    from .cache import Cache
    from .flask_ext import AppState

EXTRAS_KEY = "stats"
URL_PREFIX = "/_tiered_cache"

blueprint = Blueprint("tiered_cache", __name__, url_prefix=URL_PREFIX)


def init_app(app: Flask, state: AppState) -> None:
    """Set up the stats publisher of ``app`` and, when enabled, its endpoints."""
    publisher = metrics.StatsPublisher(state.cache, app=app.name)
    state.extras[EXTRAS_KEY] = publisher
    # Started by the first request a process serves, not here: that keeps the thread out
    # of a gunicorn master (preload_app) and of CLI processes.
    state.on_process_start.append(publisher.ensure_started)
    if state.config.endpoints:
        app.register_blueprint(blueprint)


def publisher_of(state: AppState) -> metrics.StatsPublisher | None:
    """The app's stats publisher (None before :func:`init_app` ran for it)."""
    found = state.extras.get(EXTRAS_KEY)
    return found if isinstance(found, metrics.StatsPublisher) else None


class EndpointUnauthorized(Unauthorized):
    """401 with ``WWW-Authenticate: Bearer`` and a JSON body.

    :param error: the RFC 6750 error code of the challenge (``invalid_token``), or None,
        for a request that brought no bearer token: the RFC's section 3.1 gives such a
        request no error code (``invalid_request`` would go with a 400).
    """

    def __init__(self, error: str | None = None) -> None:
        parameters: dict[str, str | None] = {"realm": "tiered_cache"}
        if error is not None:
            parameters["error"] = error
        super().__init__(www_authenticate=WWWAuthenticate("bearer", parameters))
        self.error = error

    def get_body(self, *args: Any, **kwargs: Any) -> str:
        return '{"error": "unauthorized"}'

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        headers = [(k, v) for k, v in super().get_headers(*args, **kwargs) if k != "Content-Type"]
        return [*headers, ("Content-Type", "application/json")]


def _state() -> AppState:
    from .flask_ext import TieredCache

    return TieredCache.state()


@blueprint.before_request
def _authorize() -> None:
    """Require the bearer token when one is configured (constant-time comparison)."""
    expected = _state().config.endpoints_token
    if expected is None:
        return
    auth = request.authorization
    if auth is None or auth.type != "bearer" or not auth.token:
        raise EndpointUnauthorized()  # none, another scheme (Basic) or an empty "Bearer"
    if not hmac.compare_digest(auth.token.encode(), expected.encode()):
        raise EndpointUnauthorized("invalid_token")


@blueprint.after_request
def _never_cached(response: Response) -> Response:
    """No cache, shared or private, may keep these answers."""
    response.cache_control.no_store = True
    response.cache_control.max_age = 0
    return response


@blueprint.errorhandler(EndpointUnauthorized)
def _unauthorized(error: HTTPException) -> Response:
    # The app's own error handlers must not turn our 401 into something else.
    return error.get_response()  # type: ignore[return-value]


@blueprint.get("/health")
def health() -> tuple[Response, int]:
    """Redis latency, bus and breaker state, L1 size; 503 when Redis cannot serve."""
    cache = _state().cache
    latency_ms, error = probe(cache)
    stats = cache.stats()
    healthy = error is None and not stats["breaker_open"]
    body = {
        "status": "ok" if healthy else "unavailable",
        "redis": {"ok": error is None, "latency_ms": latency_ms, "error": error},
        "bus_connected": stats["bus_connected"],
        "breaker_open": stats["breaker_open"],
        "l1_items": stats["l1_items"],
    }
    return jsonify(body), 200 if healthy else 503


PROBE_MS: Final = 10_000
"""How long the health check's write lives."""


def probe(cache: Cache) -> tuple[float | None, str | None]:
    """One write through the cache's error boundary: (latency in ms, None) or (None, why).

    A write, not a PING: a Redis that answers PING but refuses writes (``READONLY`` from a
    replica, ``OOM``, ``MISCONF``) cannot cache, and a PING's success would also close
    the breaker those refusals open, for every call of this worker.
    """
    key = cache.layout.health_probe
    started = time.perf_counter()
    try:
        # fail_open=False: an outage raises CacheUnavailable, which says why.
        tier = metrics.tier_of(cache)
        tier.run("health", lambda client: client.set(key, b"1", px=PROBE_MS), fail_open=False)
    except CacheUnavailable as exc:
        return None, str(exc)
    except redis.ResponseError as exc:  # no outage, but no write either (an ACL's NOPERM)
        return None, f"{type(exc).__name__}: {exc}"
    return round((time.perf_counter() - started) * 1000, 3), None


@blueprint.get("/stats")
def stats() -> Response:
    """Every worker on every host, this one live, and the totals."""
    state = _state()
    return jsonify(metrics.snapshot(state.cache, publisher_of(state)))


@blueprint.get("/metrics")
def prometheus() -> Response:
    """The same figures in the Prometheus text format, labelled by host, pid and app."""
    state = _state()
    workers = metrics.snapshot(state.cache, publisher_of(state))["workers"]
    try:
        body, content_type = metrics.prometheus_text(workers)
    except ImportError as exc:
        current_app.logger.error("%s", exc)
        return Response(str(exc) + "\n", status=501, content_type="text/plain")
    return Response(body, content_type=content_type)
