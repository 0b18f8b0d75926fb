"""The registry's online gc on PostgreSQL metadata (``server/gc.py`` says the rule; this
module is imported only when the metadata is in PostgreSQL, so psycopg is needed only
then)."""

from __future__ import annotations

import os

import psycopg

from lamina.server.gc import ServeGcReport
from lamina.server.meta_pg import (
    CONNECT_TIMEOUT,
    DEAD_AFTER,
    LOCK_GC,
    LOCK_NS,
    LOCK_NS_REPLICA,
    PostgresDb,
    errors,
)
from lamina.server.storage import BlobStorage
from lamina.store import locks
from lamina.store.gc import reachable
from lamina.store.store import Store


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
