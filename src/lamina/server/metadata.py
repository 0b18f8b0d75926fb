"""The registry's metadata: one interface, two databases.

``lamina serve`` keeps tags, manifests, repository links, upload sessions, referrers,
leases and its token key in a database.  ``state.RegistryState`` holds every query,
written once (schema.py holds every table); it runs them on a ``Db``:

    SqliteDb    (meta_sqlite.py) the store's own ``meta.db``: the default, no server to
                run, and ``lamina images``/``lamina gc`` see what the registry holds
    PostgresDb  (meta_pg.py) ``[metadata] url = "postgresql://…"``: any number of
                ``lamina serve`` replicas over the same blob storage share it

A ``Db`` runs SQL written with ``?`` placeholders in the common subset of the two
dialects (``INSERT … ON CONFLICT``, which SQLite has since 3.24), and says what it is:
``dialect`` (for the few words schema.render fills in) and ``shared`` (whether other
processes may move this server's upload sessions: then every request checks the
session's generation, uploads.py).

The lease (``Lease``) is the backend's too: a rolling store lease with an expiry on
SQLite (leases.py), a row tied to the replica's liveness on PostgreSQL (meta_pg.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from lamina.errors import StoreError
from lamina.server.schema import Dialect

Row = tuple[Any, ...]
log = logging.getLogger("lamina.server")


class MetadataUnavailable(StoreError):
    """The metadata database cannot be reached (PostgreSQL down, a connection lost):
    the request fails with 503 and the next one tries again."""


class Outage:
    """One log line when the metadata database (or the blob storage: ``what``) goes away
    and one when it is back — not one per failed request, nor one per thread that
    noticed."""

    def __init__(self, where: str, what: str = "metadata database") -> None:
        self.where = where
        self.what = what
        self._since: float | None = None
        self._lock = threading.Lock()

    def down(self, message: str) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.error("%s; answering 503 until it is back", message)

    def up(self) -> None:
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("%s %s is back after %.1f s", self.what, self.where,
                        time.monotonic() - since)


class Tx(Protocol):
    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; returns the rows it changed."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...


class Db(Protocol):
    dialect: Dialect
    shared: bool
    outage: Outage

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read outside any transaction (never waits for a writer)."""

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction: committed on leaving, rolled back on an exception."""

    def close(self) -> None: ...

    def lease(self, ttl: float) -> Lease:
        """What keeps this server's blobs from gc until a manifest names them."""


class Lease(Protocol):
    def protect(self, digests: Iterable[str]) -> None:
        """Keep ``digests`` from gc until a manifest names them (blocking)."""
