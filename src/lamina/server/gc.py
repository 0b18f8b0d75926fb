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

from dataclasses import dataclass, field

from lamina.errors import Unsupported
from lamina.server.leases import LEASE_TTL
from lamina.server.metadata import Db
from lamina.server.storage import BlobStorage
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
    """gc for the registry whatever its metadata: ``gc_pg``'s on PostgreSQL (over any
    blob storage), the store's own (store/gc.py, the same rule in one SQLite
    transaction) on SQLite."""
    from lamina.server.meta_sqlite import SqliteDb

    if not isinstance(db, SqliteDb):    # PostgreSQL (psycopg is imported only then)
        from lamina.server.gc_pg import collect
        from lamina.server.meta_pg import PostgresDb

        assert isinstance(db, PostgresDb)
        return collect(store, storage, db, lease_ttl, dry_run=dry_run, wait=wait)
    if storage.name != "local":
        raise Unsupported("gc of blobs in S3 needs the registry's metadata in PostgreSQL "
                          "([metadata] url): the store's SQLite gc sweeps local blobs only")
    from lamina.store.gc import collect as collect_store

    done = collect_store(store, dry_run=dry_run)
    return ServeGcReport(True, done.blobs_removed, done.bytes_freed, 0, done.leases_expired,
                         done.ingest_removed)
