"""Garbage collection: a pure mark over roots and edges, then a sweep of the rest.

Roots are tags, image records, the resources of live leases (containerd ``gc`` and
``leases``), what every container stands on until it is removed (its image's blobs and
snapshots: store/containers.py) and the layers of build-cache entries: as BuildKit's
cache records keep their layers until ``builder prune``, a cached layer stays until
``gc --cache`` drops the cache.  Mark and sweep run inside one IMMEDIATE SQLite
transaction, so no writer can add a root or lease resource between them; a writer that
registers a blob in its lease *before* checking whether the blob exists can therefore
never have it swept from under it.

Build cache mounts (cachemounts.py) are no blobs: they belong to the build cache, so
``cache=True`` removes every one no build holds now, as ``docker builder prune`` does;
``prune_build`` is ``lamina builder prune``.

Chunks (chunks.py) are reached through the recipes of the blobs that stay, or named in a
live lease (a delta pull that is about to reuse them): the rest go, with their rows in
``chunk_contents``.  The chunk sweep holds the chunk lock exclusively, so no writer is
between writing a chunk and writing the recipe that names it.

The snapshots' file pool (store/pool.py) needs no mark: an entry is live exactly while
a snapshot links it, which the file system counts; the sweep runs after the snapshots
are removed, so one ``collect`` frees both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.digest import Digest
from lamina.errors import InvalidInput, NoSpace
from lamina.store import locks, pool, scratch
from lamina.store.cachemounts import CacheMounts
from lamina.store.containers import container_roots
from lamina.store.meta import NO_SPACE_HINT
from lamina.store.packs import index_size

if TYPE_CHECKING:
    from lamina.store.chunks import ChunkStore
    from lamina.store.store import Store


def reachable(roots: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
    """Every node reachable from ``roots`` along ``edges`` (roots included)."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(edges.get(node, ()))
    return seen


@dataclass
class GcReport:
    blobs_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    snapshots_removed: list[str] = field(default_factory=list)
    ingest_removed: int = 0
    ingest_bytes_freed: int = 0   # also in bytes_freed (df shows them as temporary files)
    temp_removed: int = 0     # tmp/ entries of dead processes (store/scratch.py)
    leases_expired: int = 0
    cache_removed: int = 0
    chunks_removed: int = 0   # their bytes are in chunk_bytes_freed and in bytes_freed
    chunk_bytes_freed: int = 0
    damaged_recipes: list[str] = field(default_factory=list)   # no chunk swept then
    pool_removed: int = 0     # pool entries no snapshot links any more (store/pool.py)
    pool_bytes_freed: int = 0
    cache_mounts_removed: list[str] = field(default_factory=list)  # ids (cachemounts.py)

    def add_temp(self, count: int, size: int) -> None:
        """Count tmp/ entries removed by a higher room (run/rootfs.py's rootfs dirs of
        killed processes), so the report says every one, dry run or not."""
        self.temp_removed += count
        self.bytes_freed += size


SNAPSHOT_PREFIX = "snapshot:"
# meta key: set when a registry keeps this store's blobs but its metadata elsewhere
EXTERNAL_METADATA = "external_metadata"


def _roots(db: sqlite3.Connection, dead_leases: Iterable[str], cache: bool) -> set[str]:
    """Every root: tags, image records, resources of leases not in ``dead_leases``, and
    (unless the cache is being dropped) the layers of build-cache entries."""
    dead = set(dead_leases)
    roots: set[str] = set()
    roots.update(str(r[0]) for r in db.execute("SELECT digest FROM tags"))
    roots.update(str(r[0]) for r in db.execute("SELECT digest FROM images"))
    roots.update(str(key) for lease, key in db.execute("SELECT lease, key FROM lease_resources")
                 if str(lease) not in dead)
    roots.update(container_roots(db))
    if not cache:
        roots.update(str(r[0]) for r in db.execute("SELECT layer FROM build_cache"))
    return roots


def _edges(db: sqlite3.Connection) -> dict[str, list[str]]:
    edges: dict[str, list[str]] = {}
    for parent, child in db.execute("SELECT parent, child FROM refs"):
        edges.setdefault(str(parent), []).append(str(child))
    return edges


def collect(store: Store, dry_run: bool = False, cache: bool = False) -> GcReport:
    """Remove every blob and snapshot no root reaches, and what dead processes left
    in ingest/ and tmp/ (``bytes_freed`` counts all of it).  Build-cache entries are roots
    (their layers stay); ``cache=True`` drops every entry, and then their layers go
    like any other unreachable blob.  A dry run reports exactly what a real run with
    the same arguments would remove."""
    report = GcReport()
    meta = store.meta
    owner = meta.setting(EXTERNAL_METADATA)
    if owner is not None:
        # A registry with its metadata elsewhere (lamina serve on PostgreSQL) keeps its
        # blobs here: this database knows none of its manifests, so it would sweep them all.
        raise InvalidInput(f"the blobs of {store.root} belong to a registry whose metadata "
                           f"is in {owner}: collect them with `lamina serve gc --config …`")
    # A dry run removes no snapshot, so it counts the links their removal would drop.
    released: dict[tuple[int, int], int] = {}
    ended: dict[str, int | None] = {}   # with the abandoned locks gc now holds
    done = False
    try:
        with meta.transaction() as db:
            ended.update(_ended_leases(store, db))
            expired = list(ended)
            if not dry_run:
                for lease_id in expired:
                    db.execute("DELETE FROM lease_resources WHERE lease=?", (lease_id,))
                    db.execute("DELETE FROM leases WHERE id=?", (lease_id,))
            report.leases_expired = len(expired)
            edges = _edges(db)
            live = reachable(_roots(db, expired, cache), edges)

            for digest in list(store.blobs.list()):
                key = str(digest)
                if key in live:
                    continue
                try:
                    size = store.blobs.stored_size(digest)   # a recipe: its chunks below
                except Exception:  # noqa: BLE001 - raced with another delete
                    size = 0
                if not dry_run:
                    store.blobs.delete(digest)
                report.blobs_removed.append(key)
                report.bytes_freed += size
            _sweep_chunks(store, db, live, set(report.blobs_removed), report, dry_run)
            if not dry_run:
                # Chunked layers kept whole that are gone now: nothing left to cut.  One
                # with a recipe stays listed: a cut killed before its rows (the next
                # delta pull records them, layer/chunkmap.cut_pending).
                for (blob,) in db.execute("SELECT blob FROM chunk_pending").fetchall():
                    if str(blob) in report.blobs_removed or \
                            not store.blobs.has(Digest.parse(str(blob))):
                        db.execute("DELETE FROM chunk_pending WHERE blob=?", (blob,))
                        db.execute("DELETE FROM pending_contents WHERE blob=?", (blob,))
            for (chain_id,) in db.execute("SELECT chain_id FROM snapshots").fetchall():
                key = SNAPSHOT_PREFIX + str(chain_id)
                if key in live:
                    continue
                report.snapshots_removed.append(str(chain_id))
                path = store.snapshot_path(Digest.parse(str(chain_id)))
                if dry_run:
                    for inode, n in pool.links_in(path).items():
                        released[inode] = released.get(inode, 0) + n
                else:
                    # rmtree never follows symlinks inside the tree it removes.
                    shutil.rmtree(path, ignore_errors=True)
                    db.execute("DELETE FROM snapshots WHERE chain_id=?", (chain_id,))
            if cache:
                report.cache_removed = int(db.execute(
                    "SELECT count(*) FROM build_cache").fetchone()[0])
                if not dry_run:
                    db.execute("DELETE FROM build_cache")
            if not dry_run:
                # Records and edges of what is gone (or of parents no longer reachable).
                for (d,) in db.execute("SELECT digest FROM layers").fetchall():
                    if str(d) not in live:
                        db.execute("DELETE FROM layers WHERE digest=?", (d,))
                for (d,) in db.execute("SELECT digest FROM verified_layers").fetchall():
                    if str(d) not in live:
                        db.execute("DELETE FROM verified_layers WHERE digest=?", (d,))
                for parent in list(edges):
                    if parent not in live:
                        db.execute("DELETE FROM refs WHERE parent=?", (parent,))
        done = True
    finally:
        for lease_id, fd in ended.items():
            if fd is None:
                continue
            if done and not dry_run:
                locks.release(store.lease_lock(lease_id), fd)
            else:
                os.close(fd)
    if not dry_run:
        _sweep_lease_locks(store)
    report.ingest_removed, report.ingest_bytes_freed = \
        store.blobs.sweep_ingest(dry_run=dry_run)
    report.temp_removed, temp_bytes = scratch.sweep(store.root / "tmp", dry_run=dry_run)
    report.pool_removed, report.pool_bytes_freed = pool.sweep(store.root, dry_run, released)
    report.bytes_freed += report.ingest_bytes_freed + temp_bytes + report.pool_bytes_freed
    if cache:
        _prune_mounts(store, report, dry_run)
    return report


def _prune_mounts(store: Store, report: GcReport, dry_run: bool) -> None:
    removed, freed = CacheMounts(store.root).prune(dry_run)
    report.cache_mounts_removed = [m.id for m in removed]
    report.bytes_freed += freed


def prune_build(store: Store, everything: bool = False) -> GcReport:
    """``lamina builder prune``: every cache mount no build holds, and the build-cache
    entries whose layer no image uses (Docker's "dangling" build cache), then what gc
    then finds unreachable; ``everything``: all build-cache entries (``-a``)."""
    if everything:
        return collect(store, cache=True)
    with store.meta.transaction() as db:
        roots = {str(r[0]) for r in db.execute("SELECT digest FROM tags")}
        roots.update(str(r[0]) for r in db.execute("SELECT digest FROM images"))
        live = reachable(roots, _edges(db))
        dangling = [str(key) for key, layer in db.execute(
            "SELECT key, layer FROM build_cache").fetchall() if str(layer) not in live]
        for key in dangling:
            db.execute("DELETE FROM build_cache WHERE key=?", (key,))
    report = collect(store)
    report.cache_removed = len(dangling)
    _prune_mounts(store, report, dry_run=False)
    return report


def _sweep_chunks(store: Store, db: sqlite3.Connection, live: set[str], gone: set[str],
                  report: GcReport, dry_run: bool) -> None:
    """Remove the chunks no remaining recipe (and no live lease) names; finish
    conversions a crash cut short (a blob with its recipe and its whole file too)."""
    chunks = store.blobs.chunks
    if not chunks.chunk_dir.is_dir():
        # Never a chunk written here (a writer makes the directory, under the lock,
        # before its first chunk): nothing to sweep, and nothing to create on a full disk.
        return
    with chunks.locked(exclusive=True):
        chunks.packs.refresh()     # finds a damaged pack index before anything is swept
        kept = [d for d in chunks.recipes() if str(d) not in gone]
        used, damaged = chunks.users(kept)
        report.damaged_recipes = damaged
        for blob in kept:
            path = store.blobs.path(blob)
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                if not dry_run:
                    path.unlink()
                report.bytes_freed += size
        # A damaged recipe (or pack index) hides which chunks are needed or where they
        # are: sweep none (fsck names it).
        keep = used.keys() | live
        for digest in [] if damaged or chunks.packs.damaged else list(chunks.loose()):
            if str(digest) in keep:
                continue
            try:
                size = chunks.chunk_path(digest).stat().st_size
            except FileNotFoundError:
                continue
            if not dry_run:
                chunks.delete_chunk(digest)
            _count_chunks(report, 1, size)
        if not (damaged or chunks.packs.damaged):
            _sweep_packs(chunks, keep, report, dry_run)
    if not dry_run:
        for (chunk,) in db.execute("SELECT DISTINCT chunk FROM chunk_contents").fetchall():
            if not chunks.has_chunk(Digest.parse(str(chunk))):
                db.execute("DELETE FROM chunk_contents WHERE chunk=?", (chunk,))


def _count_chunks(report: GcReport, count: int, size: int) -> None:
    report.chunks_removed += count
    report.chunk_bytes_freed += size
    report.bytes_freed += size


def _sweep_packs(chunks: ChunkStore, keep: Collection[str], report: GcReport,
                 dry_run: bool) -> None:
    """A pack no recipe needs goes whole; one that is at least half dead is rewritten
    with only its live chunks (so a store never holds more than ~2x what its recipes
    need); a pack without an index is a crashed writer's (the index is written last)."""
    listed = chunks.packs.packs()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(chunks.packs.pack_dir):
            name = entry.name.removesuffix(".pack")
            if entry.name.endswith(".pack") and name not in listed \
                    and name not in chunks.packs.damaged:
                with contextlib.suppress(FileNotFoundError):
                    size = entry.stat().st_size
                    if not dry_run:
                        chunks.remove_pack(name)
                    _count_chunks(report, 0, size)
    # A chunk in two packs (two delta pulls of one layer at once each packed the frames
    # it fetched) is live in one only, the fullest: its other copies are dead like any.
    owned: set[str] = set()
    for name, entries in sorted(listed.items(), key=lambda item: (-len(item[1]), item[0])):
        live = []
        for e in entries:
            if str(e.digest) in keep and str(e.digest) not in owned:
                owned.add(str(e.digest))
                live.append(e)
        if len(live) == len(entries):
            continue
        try:
            size = chunks.packs.pack_path(name).stat().st_size + index_size(len(entries))
        except FileNotFoundError:
            continue
        dead = len(entries) - len(live)
        if not live:
            if not dry_run:
                chunks.remove_pack(name)
            _count_chunks(report, dead, size)
        elif 2 * sum(e.length for e in live) <= size:
            if not dry_run:
                chunks.repack(name, live)
            _count_chunks(report, dead,
                          size - sum(e.length for e in live) - index_size(len(live)))


def _ended_leases(store: Store, db: sqlite3.Connection) -> dict[str, int | None]:
    """Leases that protect nothing any more, each with the descriptor holding its
    abandoned lock (None for a lease without one).  A lease whose lock file exists
    lives exactly as long as the process holding it (store.open_lease); one without
    (the server's rolling leases, a lease of an older lamina) ends at its expiry time."""
    now = time.time()
    ended: dict[str, int | None] = {}
    try:
        for lease_id, expires in db.execute("SELECT id, expires FROM leases").fetchall():
            key = str(lease_id)
            try:
                fd = locks.take_if_abandoned(store.lease_lock(key))
            except FileNotFoundError:
                if float(expires) < now:
                    ended[key] = None
                continue
            except OSError:
                continue   # cannot tell: keep it
            if fd is not None:
                ended[key] = fd
    except BaseException:
        for fd in ended.values():
            if fd is not None:
                os.close(fd)
        raise
    return ended


def _sweep_lease_locks(store: Store) -> None:
    """Remove lock files no lease row names whose process is gone (it died between
    deleting its row and unlinking its lock)."""
    rows = {lease_id for lease_id, _ in store.meta.leases()}
    with contextlib.suppress(OSError):
        for entry in os.scandir(store.lease_dir):
            name = entry.name.removesuffix(".lock")
            if name == entry.name or name in rows:
                continue
            with contextlib.suppress(OSError):
                fd = locks.take_if_abandoned(entry.path, min_age=locks.STALE_AGE)
                if fd is not None:
                    locks.release(Path(entry.path), fd)


def discard(store: Store, candidates: Iterable[str], lease_id: str | None = None) -> list[str]:
    """Remove the given blobs unless something else still reaches them.

    Used when an import or load fails: what it wrote goes at once instead of waiting
    for gc, so bad input leaves the store as it was.  The failing operation's own lease
    (``lease_id``) does not count as a root; every other live lease does."""
    removed: list[str] = []
    wanted = set(candidates)
    if not wanted:
        return removed
    with store.meta.transaction() as db:
        dead = [] if lease_id is None else [lease_id]
        live = reachable(_roots(db, dead, cache=False), _edges(db))
        for key in sorted(wanted - live):
            if store.blobs.delete(Digest.parse(key)):
                removed.append(key)
            db.execute("DELETE FROM layers WHERE digest=?", (key,))
            db.execute("DELETE FROM verified_layers WHERE digest=?", (key,))
            db.execute("DELETE FROM refs WHERE parent=?", (key,))
    return removed


def open_to_collect(root: Path | None = None, dry_run: bool = False) -> Store:
    """The store at ``root`` for gc, on a full file system too.  Should its metadata not
    open even with the reserve given up (Store._open_meta), what needs no metadata to
    judge goes first — ingest files and tmp entries of dead processes — and the open is
    tried again (not in a dry run, which removes nothing): gc is the command that must
    work when nothing else does."""
    from lamina.store.blobs import BlobStore
    from lamina.store.store import Store, default_root

    try:
        return Store(root)
    except NoSpace:
        if dry_run:
            raise
        where = Path(root) if root is not None else default_root()
        BlobStore(where).sweep_ingest()
        scratch.sweep(where / "tmp")
        try:
            return Store(root)
        except NoSpace as e:
            # Not "run `lamina gc`" again: this is gc, and nothing it can judge without
            # the metadata was left to free.
            raise NoSpace(e.message.removesuffix(NO_SPACE_HINT) +
                          "gc found nothing to remove without it: free space on the file "
                          f"system holding {where}") from None
