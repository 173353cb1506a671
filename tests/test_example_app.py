"""The example app's pieces without gunicorn: its database and its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from example_app import create_app
from example_app.db import Catalogue, seed_products
from tests.flask_apps import close_app
from tests.procs import run_in_processes
from tiered_cache import TieredCache


def _create(path: str) -> int:
    Catalogue(path, delay_ms=0).create()
    return len(Catalogue(path, delay_ms=0).all())


def test_four_workers_can_create_the_database_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "catalogue.sqlite3")
    assert run_in_processes(_create, [(path,)] * 4) == [36] * 4
    assert Catalogue(path, delay_ms=0).all() == seed_products()


def test_updates_survive_seeding_again(tmp_path: Path) -> None:
    catalogue = Catalogue(str(tmp_path / "catalogue.sqlite3"), delay_ms=0)
    catalogue.create()
    changed = {"id": 1, "name": "Cheap chair", "price": 1.5}
    assert catalogue.update(1, {"price": 1.5, "name": "Cheap chair"}) == changed
    catalogue.create()  # the next start: existing rows are kept
    assert catalogue.get(1) == changed
    assert catalogue.update(999, {"price": 1}) is None
    # An id past SQLite's INTEGER names no product (sqlite3 raised OverflowError: a 500).
    assert catalogue.get(2**63) is None and catalogue.update(2**70, {"price": 1}) is None
    with pytest.raises(ValueError, match="only name and price"):
        catalogue.update(1, {"price = 0 --": 1})


def test_search_takes_the_text_literally(tmp_path: Path) -> None:
    catalogue = Catalogue(str(tmp_path / "catalogue.sqlite3"), delay_ms=0)
    catalogue.create()
    assert [p["name"] for p in catalogue.search("oak c")] == ["Oak chair"]
    assert [p["id"] for p in catalogue.search("CLAY")] == list(range(31, 37))
    assert catalogue.search("%") == catalogue.search("_") == []


def test_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERED_CACHE_PREFIX", "shop")
    monkeypatch.setenv("TIERED_CACHE_L1_MAX_ITEMS", "123")
    monkeypatch.setenv("EXAMPLE_DB_PATH", str(tmp_path / "env.sqlite3"))
    monkeypatch.delenv("SECRET_KEY", raising=False)
    app = create_app({"TIERED_CACHE_PREFIX": "given"})  # arguments beat the environment
    try:
        state = TieredCache.state(app)
        assert state.cache.config.prefix == "given"
        assert state.cache.config.l1_max_items == 123
        assert state.config.endpoints and state.config.sessions  # the example's defaults
        assert (tmp_path / "env.sqlite3").exists()
        assert app.config["SECRET_KEY"]  # made up when none is given
    finally:
        close_app(app)


@pytest.mark.parametrize("delay", ["-5", "nan", "inf", "soon"])
def test_a_bad_database_delay_fails_at_start_naming_the_setting(tmp_path: Path, delay: str) -> None:
    """time.sleep refused it on every query: a 500 for every page."""
    config = {"EXAMPLE_DB_DELAY_MS": delay, "EXAMPLE_DB_PATH": str(tmp_path / "d.sqlite3")}
    with pytest.raises(ValueError, match="EXAMPLE_DB_DELAY_MS"):
        create_app(config)


def test_an_update_writes_through_to_the_cache(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 7: PUT updates the database *and the cache*: the new record is cached before
    the answer, so the next read of it costs no database query in any worker."""
    app = create_app(
        {"TIERED_CACHE_REDIS_URL": redis_url, "EXAMPLE_DB_PATH": str(tmp_path / "w.sqlite3")}
    )
    try:
        client = app.test_client()
        assert client.get("/products/1").json["id"] == 1  # type: ignore[index]
        put = client.put("/products/1", json={"price": 42.5})
        assert put.status_code == 200
        assert TieredCache.state(app).cache.get("product:1") == put.json

        def no_query(product_id: int) -> None:
            pytest.fail(f"product {product_id} was read from the database")

        monkeypatch.setattr(app.extensions["example_catalogue"], "get", no_query)
        fresh = client.get("/products/1")  # a new page, built from the cached record
        assert fresh.json == put.json and fresh.headers["X-Cache"] == "MISS"
    finally:
        close_app(app)
