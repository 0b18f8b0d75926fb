"""The registry's metadata in the store's own SQLite database (``meta.db``): the default.

Writes go through ``store.meta`` (one serialised connection, IMMEDIATE transactions;
callers run them in worker threads).  Reads on the hot paths use a second, read-only
connection of this object's own: in WAL mode it never waits for a writer, so a ``lamina
gc`` holding the write lock in another process never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lamina.errors import StoreError
from lamina.server import schema
from lamina.server.leases import RollingLease
from lamina.server.metadata import Outage, Row
from lamina.store.store import Store


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, tuple(args)).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, [tuple(r) for r in rows])

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, tuple(args)).fetchall()


class SqliteDb:
    dialect: schema.Dialect = "sqlite"
    shared = False

    def __init__(self, store: Store) -> None:
        self.meta = store.meta
        self.outage = Outage(str(store.meta.path))     # never down: a local file
        with self.transaction() as tx:
            schema.migrate(tx, self.dialect)
        self._rd = sqlite3.connect(self.meta.path, isolation_level=None,
                                   check_same_thread=False)
        self._rd.execute("PRAGMA query_only=1")
        self._rd.execute("PRAGMA busy_timeout=10000")
        self._rd_lock = threading.Lock()

    def close(self) -> None:
        self._rd.close()

    def lease(self, ttl: float) -> RollingLease:
        return RollingLease(self.meta, ttl)

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._rd_lock:
            try:
                return self._rd.execute(sql, tuple(args)).fetchall()
            except sqlite3.DatabaseError as e:
                raise StoreError(f"store metadata: {e}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        with self.meta.transaction() as db:
            yield _SqliteTx(db)
