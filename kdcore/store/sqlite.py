"""The SQLite dialect of the run store: one file, `$KDCORE_HOME/kdcore.db`, in WAL mode.

WAL lets readers proceed while one writer commits. Every write transaction starts with BEGIN IMMEDIATE,
which takes the database's one write lock at once: writers run one after another, so the store's named
locks (see `kdcore.store.postgres`) need nothing more here. A busy database is retried, never surfaced
as "database is locked".
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdcore.errors import StoreError


class SQLite:
    """How the store speaks to an SQLite file (the default backend)."""

    name = "sqlite"
    # The schema's column types (kdcore.store._SCHEMA). `value` of stage_results has no declared type, so an
    # int stays an int and a float a float.
    types = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "float": "REAL", "any": ""}
    greatest = "MAX"  # the larger of two values (SQLite's MAX takes two arguments as a scalar function)
    same = "IS"  # NULL-safe equality
    errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)  # what error messages name

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    def describe(self, exc: Exception) -> str:
        return f"run store database {self.path} is unreadable (corrupt or not SQLite): {exc}"

    def tables(self, db: sqlite3.Connection) -> set[str]:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def columns(self, db: sqlite3.Connection, table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    @contextmanager
    def transaction(self, db: sqlite3.Connection, lock: str | tuple[str, ...] | None = None
                    ) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, retried while another process holds the write lock. `lock` is not needed:
        BEGIN IMMEDIATE already serialises every writer."""
        delay = 0.01
        for _ in range(200):
            try:
                db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        else:
            raise StoreError(f"run store {self.path} stayed locked by another process for too long")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    @staticmethod
    def insert_rows(db: sqlite3.Connection, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})", rows)

    @staticmethod
    def encode_any(value: Any) -> Any:
        return value

    @staticmethod
    def decode_any(value: Any) -> Any:
        return value
