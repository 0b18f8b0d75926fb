"""The registry's metadata in PostgreSQL (``[metadata] url = "postgresql://…"``): what
lets any number of ``lamina serve`` replicas serve one registry.

Connections come from a psycopg_pool pool (autocommit; a transaction per ``transaction``
block).  A connection that breaks — PostgreSQL restarted, the network dropped — is
discarded and replaced by the pool; the request that met it fails with
``MetadataUnavailable`` (503), and the next one gets a fresh connection once the
database answers again.  Nothing is retried behind the client's back: a write either
committed (then the client was told so) or rolled back with its connection.

Replica liveness (``Replica``) is PostgreSQL's, not the wall clock's: each replica
inserts a ``registry_replicas`` row and holds the session advisory lock
``(LOCK_NS_REPLICA, id)`` on a connection of its own, beating every ``HEARTBEAT``
seconds on it.  A process that dies (kill -9 too) loses the connection and the lock
with it, at once.  ``serve gc`` takes a replica for dead when it can take that lock and
the last beat is older than ``DEAD_AFTER`` (the grace covers a restart of PostgreSQL,
after which every replica's lock is gone until it reconnects), and then drops its row
and, by cascade, its leases.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool

from lamina.errors import StoreError
from lamina.server import schema
from lamina.server.metadata import MetadataUnavailable, Outage, Row

log = logging.getLogger("lamina.server")

# Advisory lock keys, two-int form ("lmna", what): PostgreSQL keeps the two-int and the
# one-bigint key spaces apart, so no other user of one-key locks collides with these.
LOCK_NS = 0x6C6D6E61
LOCK_NS_REPLICA = LOCK_NS + 1
LOCK_GC = 1
LOCK_MIGRATE = 2

HEARTBEAT = 2.0            # seconds between a replica's beats
DEAD_AFTER = 30.0          # a replica without its lock and silent this long is dead
POOL_SIZE = 16             # connections per replica (worker threads queue beyond)
POOL_WAIT = 3.0            # seconds a request waits for a connection before its 503
CONNECT_TIMEOUT = 5        # seconds (libpq connect_timeout)
RECONNECT = 3.0            # seconds the pool keeps retrying a lost connection by itself


def _pg(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a memo on purpose
    """``?`` placeholders → psycopg's ``%s`` (and a literal ``%`` escaped)."""
    out = cache.get(sql)
    if out is None:
        out = cache[sql] = sql.replace("%", "%%").replace("?", "%s")
    return out


@contextlib.contextmanager
def errors(what: str) -> Iterator[None]:
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as e:
        raise MetadataUnavailable(f"metadata database unavailable ({what}): "
                                  f"{_first_line(e)}") from None
    except psycopg.Error as e:
        raise StoreError(f"metadata database ({what}): {str(e).strip()[:300]}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _PgTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._conn.execute(_pg(sql), tuple(args)).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(r) for r in rows]
        if batch:
            with self._conn.cursor() as cur:
                cur.executemany(_pg(sql), batch)

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(_pg(sql), tuple(args)).fetchall()


def _connect_args(url: str) -> dict[str, Any]:
    return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "lamina serve"}


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    with contextlib.suppress(Exception):
        info = psycopg.conninfo.conninfo_to_dict(url)
        host = info.get("host", "")
        port = info.get("port", "")
        return f"postgresql://{host}{':' if port else ''}{port}/{info.get('dbname', '')}"
    return "postgresql://…"


class PostgresDb:
    dialect: schema.Dialect = "postgresql"
    shared = True

    def __init__(self, url: str, pool_size: int = POOL_SIZE, wait: float = POOL_WAIT) -> None:
        self.url = url
        self.where = redact(url)
        self.outage = Outage(self.where)
        # psycopg_pool logs every failed reconnect attempt; the outage is logged once
        # (Outage), so its own warnings would only bury that line.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self._replica: Replica | None = None
        self.pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs=_connect_args(url), open=False,
            timeout=wait, check=psycopg_pool.ConnectionPool.check_connection,
            # Give up a reconnection after a few seconds (the pool's backoff doubles
            # towards minutes): the next request that wants a connection starts a
            # fresh attempt at once, so service resumes with the first request after
            # PostgreSQL is back.
            reconnect_timeout=RECONNECT, name="lamina-metadata")
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except psycopg_pool.PoolTimeout:
            self.pool.close()
            raise StoreError(f"cannot connect to the metadata database {self.where}") from None
        try:
            with self.transaction() as tx:
                tx.execute("SELECT pg_advisory_xact_lock(?::integer, ?::integer)",
                           (LOCK_NS, LOCK_MIGRATE))
                schema.migrate(tx, self.dialect)
        except BaseException:
            self.pool.close()
            raise

    def close(self) -> None:
        if self._replica is not None:
            self._replica.stop()
        self.pool.close()

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with errors(self.where), self.pool.connection() as conn:
            return conn.execute(_pg(sql), tuple(args)).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        with errors(self.where), self.pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    def lease(self, ttl: float) -> Replica:
        """This process as a replica (started on first use), whose leases ``protect``."""
        if self._replica is None:
            self._replica = Replica(self, ttl)
        return self._replica


class Replica:
    """A live ``lamina serve`` process in ``registry_replicas``, and its leases.

    ``protect`` inserts (or refreshes) ``(replica, digest)`` rows under the shared gc
    lock, so a ``serve gc`` that marks after it sees them, and one that is sweeping
    finishes before it (the store's rule, store/gc.py: protect first, then look)."""

    def __init__(self, db: PostgresDb, ttl: float) -> None:
        self.db = db
        self.ttl = ttl
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.id = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._register()
        self._thread = threading.Thread(target=self._beat, name="lamina-replica",
                                        daemon=True)
        self._thread.start()

    def _register(self) -> None:
        """(Re)connect the liveness connection, take the replica lock, make sure the row
        is there (gc drops the row of a replica it took for dead)."""
        with errors(self.db.where):
            conn = psycopg.connect(self.db.url, **_connect_args(self.db.url))
            try:
                if self.id:
                    conn.execute("INSERT INTO registry_replicas(id, name) VALUES(%s, %s) "
                                 "ON CONFLICT(id) DO UPDATE SET heartbeat=now()",
                                 (self.id, self.name))
                else:
                    row = conn.execute("INSERT INTO registry_replicas(name) VALUES(%s) "
                                       "RETURNING id", (self.name,)).fetchone()
                    assert row is not None
                    self.id = int(row[0])
                conn.execute("SELECT pg_advisory_lock(%s::integer, %s::integer)",
                             (LOCK_NS_REPLICA, self.id))
            except BaseException:
                conn.close()
                raise
        old, self._conn = self._conn, conn
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()

    def _beat(self) -> None:
        lost = False
        while not self._stop.wait(HEARTBEAT):
            try:
                with self._lock:
                    if lost or self._conn is None or self._conn.closed:
                        self._register()
                        if lost:
                            self.db.pool.check()    # refill the pool now
                            self.db.outage.up()
                        lost = False
                    conn = self._conn
                    assert conn is not None
                    if conn.execute("UPDATE registry_replicas SET heartbeat=now() "
                                    "WHERE id=%s", (self.id,)).rowcount == 0:
                        self._register()
            except (StoreError, psycopg.Error) as e:
                if not lost:
                    self.db.outage.down(str(e) if isinstance(e, StoreError) else
                                        f"metadata database unavailable ({self.db.where}): "
                                        f"{_first_line(e)}")
                lost = True

    def stop(self) -> None:
        """Leave: the lock goes with the connection; the row and its leases stay until
        gc finds the replica dead (``DEAD_AFTER`` later), so a push that uploaded here
        and sends its manifest to another replica during a rolling restart is not cut
        short by a gc in between."""
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT * 2)
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def protect(self, digests: Iterable[str]) -> None:
        keys = list(dict.fromkeys(digests))
        if not keys:
            return
        for attempt in (1, 2):
            try:
                with self.db.transaction() as tx:
                    tx.execute("SELECT pg_advisory_xact_lock_shared(?::integer, ?::integer)",
                               (LOCK_NS, LOCK_GC))
                    tx.executemany("INSERT INTO registry_leases(replica, key) VALUES(?, ?) "
                                   "ON CONFLICT(replica, key) DO UPDATE SET created=now()",
                                   [(self.id, k) for k in keys])
                return
            except StoreError as e:
                # gc took this replica for dead (it was cut off for DEAD_AFTER) and
                # dropped its row: come back, then protect.
                if attempt == 2 or "registry_leases_replica_fkey" not in str(e):
                    raise
                with self._lock:
                    self._register()
