"""Online garbage collection for a registry on PostgreSQL metadata (``lamina serve gc``,
or ``[metadata] gc_interval``), safe while every replica goes on taking pushes.

The rule is the store's (store/gc.py): a writer registers what it is about to reference
in a lease *before* it looks whether the blob is there, and gc's mark and sweep see no
lease appear between them.  Across processes the second half is a PostgreSQL advisory
lock: every ``Replica.protect`` transaction takes ``(LOCK_NS, LOCK_GC)`` shared, gc holds
it exclusive from before its mark until after its sweep.  So a lease committed before
gc took the lock is a root of the mark; a protect that comes later waits, and then finds
the blob gone (an upload writes it again, a manifest is refused with
MANIFEST_BLOB_UNKNOWN) — never a manifest committed over a missing blob.

Roots: tags, image records (every manifest pushed, by tag or digest), and the leases of
live replicas younger than the lease TTL.  A replica is dead when gc can take its lock
(its connection, and so its process, is gone) and it has not beaten for ``DEAD_AFTER``;
its row goes, and its leases with it (ON DELETE CASCADE).  Edges: ``refs``.  Upload
sessions' ingest files are left for the sessions to finish or expire, whichever replica
continues them.  With several replicas on a schedule, only one collects at a time: the
others find the lock taken and skip their turn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psycopg

from lamina.errors import Unsupported
from lamina.server.leases import LEASE_TTL
from lamina.server.meta_pg import (
    CONNECT_TIMEOUT,
    DEAD_AFTER,
    LOCK_GC,
    LOCK_NS,
    LOCK_NS_REPLICA,
    PostgresDb,
    errors,
)
from lamina.server.metadata import Db
from lamina.server.storage import BlobStorage
from lamina.store import locks
from lamina.store.gc import reachable
from lamina.store.store import Store


@dataclass
class ServeGcReport:
    ran: bool = True                  # False: another gc held the lock (wait=False)
    blobs_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    replicas_dead: int = 0
    leases_expired: int = 0
    ingest_removed: int = 0
    live: int = 0


def run(store: Store, storage: BlobStorage, db: Db, lease_ttl: float = LEASE_TTL,
        dry_run: bool = False, wait: bool = True) -> ServeGcReport:
    """gc for the registry whatever its metadata: this module's on PostgreSQL (over any
    blob storage), the store's own (store/gc.py, the same rule in one SQLite
    transaction) on SQLite."""
    if isinstance(db, PostgresDb):
        return collect(store, storage, db, lease_ttl, dry_run=dry_run, wait=wait)
    if storage.name != "local":
        raise Unsupported("gc of blobs in S3 needs the registry's metadata in PostgreSQL "
                          "([metadata] url): the store's SQLite gc sweeps local blobs only")
    from lamina.store.gc import collect as collect_store

    done = collect_store(store, dry_run=dry_run)
    return ServeGcReport(True, done.blobs_removed, done.bytes_freed, 0, done.leases_expired,
                         done.ingest_removed)


def collect(store: Store, storage: BlobStorage, db: PostgresDb, lease_ttl: float,
            dry_run: bool = False, wait: bool = True) -> ServeGcReport:
    """Mark from the database, sweep the blob storage.  ``wait=False``: give up at once
    if another gc is running (a scheduled turn)."""
    report = ServeGcReport()
    # The lock lives on a connection of its own (a pooled one goes back to the pool
    # between transactions): should gc die, the connection, and the lock, go with it.
    with errors(db.where):
        conn = psycopg.connect(db.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    try:
        with errors(db.where):
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s::integer, %s::integer)",
                             (LOCK_NS, LOCK_GC))
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)",
                                   (LOCK_NS, LOCK_GC)).fetchone()
                if not (row and row[0]):
                    report.ran = False
                    return report
        _collect(store, storage, db, lease_ttl, dry_run, report)
    finally:
        conn.close()        # and the lock with it
    return report


def _collect(store: Store, storage: BlobStorage, db: PostgresDb, lease_ttl: float,
             dry_run: bool, report: ServeGcReport) -> None:
    with db.transaction() as tx:
        dead = [int(r[0]) for r in tx.rows(
            "SELECT id FROM registry_replicas WHERE heartbeat < now() - make_interval("
            "secs => ?) ORDER BY id", (DEAD_AFTER,))
            if tx.rows("SELECT pg_try_advisory_xact_lock(?::integer, ?::integer)",
                       (LOCK_NS_REPLICA, int(r[0])))[0][0]]
        report.replicas_dead = len(dead)
        old = "created < now() - make_interval(secs => ?)"
        report.leases_expired = int(tx.rows(
            f"SELECT count(*) FROM registry_leases WHERE {old}", (lease_ttl,))[0][0])
        for d in dead:
            report.leases_expired += int(tx.rows(
                f"SELECT count(*) FROM registry_leases WHERE replica=? AND NOT ({old})",
                (d, lease_ttl))[0][0])
            if not dry_run:
                tx.execute("DELETE FROM registry_replicas WHERE id=?", (d,))
        if not dry_run:
            tx.execute(f"DELETE FROM registry_leases WHERE {old}", (lease_ttl,))
        # (in a dry run the dead replicas' rows are still there: leave their leases out)
        skip = "AND replica NOT IN (" + ",".join(str(d) for d in dead) + ")" if dead else ""
        roots = {str(r[0]) for r in tx.rows("SELECT digest FROM tags")}
        roots.update(str(r[0]) for r in tx.rows("SELECT digest FROM images"))
        roots.update(str(r[0]) for r in tx.rows(
            f"SELECT key FROM registry_leases WHERE NOT ({old}) {skip}", (lease_ttl,)))
        edges: dict[str, list[str]] = {}
        for parent, child in tx.rows("SELECT parent, child FROM refs"):
            edges.setdefault(str(parent), []).append(str(child))
    live = reachable(roots, edges)
    report.live = len(live)
    for digest in list(storage.digests()):
        key = str(digest)
        if key in live:
            continue
        size = storage.size(digest) or 0
        if not dry_run:
            storage.delete(digest)
        report.blobs_removed.append(key)
        report.bytes_freed += size
    if not dry_run:
        with db.transaction() as tx:
            for (d,) in tx.rows("SELECT digest FROM layers"):
                if str(d) not in live:
                    tx.execute("DELETE FROM layers WHERE digest=?", (d,))
            for parent in edges:
                if parent not in live:
                    tx.execute("DELETE FROM refs WHERE parent=?", (parent,))
    if storage.name == "local":     # S3: a session's parts go with its row (expiry)
        report.ingest_removed = _sweep_ingest(store, db, dry_run)


def _sweep_ingest(store: Store, db: PostgresDb, dry_run: bool) -> int:
    """Ingest files no live writer holds and no upload session names (a session a
    killed replica left goes on elsewhere, from its file)."""
    sessions = {str(r[0]) for r in db.rows("SELECT path FROM server_uploads")}
    removed = 0
    ingest = store.blobs.ingest_dir
    for entry in list(ingest.iterdir()) if ingest.is_dir() else []:
        if str(entry) in sessions:
            continue
        try:
            fd = locks.take_if_abandoned(str(entry), min_age=60.0)
        except OSError:
            continue
        if fd is None:
            continue
        try:
            if not dry_run:
                entry.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed
