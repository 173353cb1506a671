"""The catalogue's database: SQLite, slowed down on purpose so the cache's effect shows.

Every query sleeps ``EXAMPLE_DB_DELAY_MS`` (default 20) first, like a real database
across a network. Each call opens its own connection: SQLite connections are cheap, and
nothing is shared between threads or across gunicorn's fork.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sqlite3
import time
from collections.abc import Iterator, Mapping
from typing import Any

Product = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL,
    price REAL NOT NULL
)
"""
_MATERIALS = ("Oak", "Walnut", "Steel", "Glass", "Linen", "Clay")
_THINGS = ("chair", "table", "lamp", "shelf", "vase", "bowl")


def seed_products() -> list[Product]:
    """The 36 products of a new catalogue, always the same ones."""
    pairs = itertools.product(_MATERIALS, _THINGS)
    return [
        {"id": i, "name": f"{material} {thing}", "price": round(9.5 + (i * 7.25) % 240, 2)}
        for i, (material, thing) in enumerate(pairs, start=1)
    ]


def _storable_id(product_id: int) -> bool:
    """Whether SQLite's INTEGER can hold ``product_id`` (a larger id names no product;
    sqlite3 would raise OverflowError on it)."""
    return -(2**63) <= product_id < 2**63


class Catalogue:
    """The products table of one SQLite file.

    :param path: the database file (created with its parent directory if missing).
    :param delay_ms: milliseconds every query waits before it runs.
    """

    def __init__(self, path: str, *, delay_ms: float = 20) -> None:
        if not (math.isfinite(delay_ms) and delay_ms >= 0):  # time.sleep would refuse it
            raise ValueError(f"EXAMPLE_DB_DELAY_MS={delay_ms!r}: expected milliseconds >= 0")
        self.path = path
        self.delay = delay_ms / 1000

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # timeout: wait for another worker's write instead of failing with "locked".
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def _query(self, conn: sqlite3.Connection, sql: str, *args: Any) -> list[Product]:
        time.sleep(self.delay)
        return [dict(row) for row in conn.execute(sql, args)]

    def create(self) -> None:
        """Create the table and seed it; safe when several workers start at once."""
        with self._connect() as conn:
            # IMMEDIATE takes the write lock first: concurrent starters queue up, and
            # INSERT OR IGNORE makes the late ones no-ops.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_SCHEMA)
            conn.executemany(
                "INSERT OR IGNORE INTO products (id, name, price) VALUES (:id, :name, :price)",
                seed_products(),
            )
            conn.execute("COMMIT")

    def all(self) -> list[Product]:
        """Every product, by id."""
        with self._connect() as conn:
            return self._query(conn, "SELECT id, name, price FROM products ORDER BY id")

    def get(self, product_id: int) -> Product | None:
        """One product, or None."""
        if not _storable_id(product_id):
            return None
        with self._connect() as conn:
            rows = self._query(
                conn, "SELECT id, name, price FROM products WHERE id = ?", product_id
            )
        return rows[0] if rows else None

    def search(self, text: str) -> list[Product]:
        """The products whose name contains ``text`` (case-insensitive for ASCII)."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._connect() as conn:
            return self._query(
                conn,
                "SELECT id, name, price FROM products WHERE name LIKE ? ESCAPE '\\' ORDER BY id",
                pattern,
            )

    def update(self, product_id: int, changes: Mapping[str, Any]) -> Product | None:
        """Apply ``changes`` (``name`` and/or ``price``) and return the product, or None."""
        if not changes or not set(changes) <= {"name", "price"}:
            raise ValueError(f"only name and price can change, not {sorted(changes)}")
        if not _storable_id(product_id):
            return None
        assignments = ", ".join(f"{column} = :{column}" for column in changes)
        with self._connect() as conn:
            time.sleep(self.delay)
            cursor = conn.execute(
                f"UPDATE products SET {assignments} WHERE id = :id",  # noqa: S608 - validated names
                {**changes, "id": product_id},
            )
            if cursor.rowcount == 0:
                return None
            return self._query(
                conn, "SELECT id, name, price FROM products WHERE id = ?", product_id
            )[0]
