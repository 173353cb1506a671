"""The routes: cached catalogue reads, a write-through update, sessions, a rate-limited search."""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, session

from tiered_cache import TieredCache

from .db import Catalogue, Product

tc = TieredCache()  # bound to each app by create_app(); the decorators work before that
bp = Blueprint("catalogue", __name__)


def catalogue() -> Catalogue:
    return current_app.extensions["example_catalogue"]  # type: ignore[no-any-return]


@bp.get("/")
def home() -> str:
    return render_template("home.html")


# -- reads: cached pages ---------------------------------------------------------------
# namespace="products" groups these pages so that one call drops them all (see update).
# public=True: the same page for everyone, so a worker that holds it in L1 answers before
# Flask even builds a request (X-Cache: HIT-L1), without a Redis round trip.


@bp.get("/products")
@tc.cached(timeout=300, namespace="products", public=True)
def products() -> dict[str, Any]:
    return {"products": catalogue().all()}


@bp.get("/products/<int:product_id>")
@tc.cached(timeout=300, namespace="products", public=True)
def product(product_id: int) -> Product:
    found = product_record(product_id)
    if found is None:
        abort(404, description=f"no product {product_id}")  # not cached: only 200s are
    return found


def product_record(product_id: int) -> Product | None:
    """Cache-aside: the product from the cache, else from the database (then cached).

    One loader runs across every worker when many miss at once (single flight)."""
    key = record_key(product_id)
    found: Product | None = tc.get_or_set(key, lambda: catalogue().get(product_id), timeout=300)
    return found


def record_key(product_id: int) -> str:
    return f"product:{product_id}"


# -- the write: database first, then the cache, before answering -----------------------


@bp.put("/products/<int:product_id>")
def update_product(product_id: int) -> Product:
    changes = validated(request.get_json(silent=True), product_id)
    updated = catalogue().update(product_id, changes)
    if updated is None:
        abort(404, description=f"no product {product_id}")
    # Write-through: the new record goes to Redis and this worker's L1, and the bus drops
    # every other worker's copy, before the answer leaves.
    tc.set(record_key(product_id), updated, timeout=300)
    # The pages that show it: one O(1) call, the namespace's version goes up in Redis and
    # the bus tells every worker, so no worker serves an old page after this returns.
    tc.invalidate_namespace("products")
    return updated


def validated(body: Any, product_id: int) -> dict[str, Any]:
    """The changes of a PUT body: ``name`` and/or ``price`` (``id`` may only repeat the URL's)."""
    if not isinstance(body, dict) or not body:
        abort(400, description='expected a JSON object such as {"price": 12.5}')
    unknown = set(body) - {"id", "name", "price"}
    if unknown:
        abort(400, description=f"unknown fields: {', '.join(sorted(unknown))}")
    if "id" in body and body["id"] != product_id:
        abort(400, description="id cannot change")
    changes: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            abort(400, description="name: a non-empty string of at most 100 characters")
        changes["name"] = name.strip()
    if "price" in body:
        price = body["price"]
        valid = isinstance(price, int | float) and not isinstance(price, bool)
        if not valid or not math.isfinite(price) or not 0 <= price <= 1_000_000:
            abort(400, description="price: a number from 0 to 1000000")
        changes["price"] = round(float(price), 2)
    if not changes:
        abort(400, description="nothing to change: give name and/or price")
    return changes


# -- sessions (kept in Redis, never in a worker's memory) -------------------------------


@bp.post("/login")
def login() -> dict[str, Any]:
    body = request.get_json(silent=True)
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not user.strip():
        abort(400, description='expected {"user": "<name>"}')
    # A real app checks a password first. login() gives the session a new id (so a
    # session id planted before login is worthless) and records it under the user, so
    # tc.sessions.revoke_user(user) can end all of that user's sessions at once.
    tc.sessions.login(user.strip())
    return {"user": user.strip()}


@bp.post("/logout")
def logout() -> dict[str, Any]:
    tc.sessions.logout()
    return {"user": None}


@bp.get("/me")
def me() -> dict[str, Any]:
    return {"user": session.get("user_id")}


# -- a rate-limited search ---------------------------------------------------------------
# The limit is counted in Redis, so it holds across every worker (and host): 30 searches
# a minute per client address, then 429 with Retry-After. Results are cached for a minute.


@bp.get("/search")
@tc.limit("30/minute")
@tc.cached(timeout=60, namespace="products")
def search() -> dict[str, Any]:
    text = request.args.get("q", "").strip()
    if not text:
        abort(400, description="give the text to look for: /search?q=oak")
    return {"q": text, "products": catalogue().search(text)}
