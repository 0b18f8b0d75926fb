"""Garbage collection: a pure mark over roots and edges, then a sweep of the rest.

Roots are tags, image records and the resources of live leases (containerd ``gc`` and
``leases``).  Mark and sweep run inside one IMMEDIATE SQLite transaction, so no writer can
add a root or lease resource between them; a writer that registers a blob in its lease
*before* checking whether the blob exists can therefore never have it swept from under it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lamina.digest import Digest
from lamina.store.rmtree import remove_tree

if TYPE_CHECKING:
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
    leases_expired: int = 0
    cache_removed: int = 0


SNAPSHOT_PREFIX = "snapshot:"


def collect(store: Store, dry_run: bool = False, cache: bool = False) -> GcReport:
    """Remove every blob and snapshot no root reaches.  Build-cache entries are weak:
    an entry whose layer goes goes with it; ``cache=True`` drops every entry first."""
    report = GcReport()
    meta = store.meta
    with meta.transaction() as db:
        now = time.time()
        expired = [str(r[0]) for r in db.execute("SELECT id FROM leases WHERE expires < ?",
                                                 (now,))]
        if not dry_run:
            for lease_id in expired:
                db.execute("DELETE FROM lease_resources WHERE lease=?", (lease_id,))
                db.execute("DELETE FROM leases WHERE id=?", (lease_id,))
        report.leases_expired = len(expired)
        roots: set[str] = set()
        roots.update(str(r[0]) for r in db.execute("SELECT digest FROM tags"))
        roots.update(str(r[0]) for r in db.execute("SELECT digest FROM images"))
        roots.update(str(r[0]) for r in db.execute(
            "SELECT key FROM lease_resources WHERE lease NOT IN "
            "(SELECT id FROM leases WHERE expires < ?)", (now,)))
        edges: dict[str, list[str]] = {}
        for parent, child in db.execute("SELECT parent, child FROM refs"):
            edges.setdefault(str(parent), []).append(str(child))
        live = reachable(roots, edges)

        for digest in list(store.blobs.list()):
            key = str(digest)
            if key in live:
                continue
            try:
                size = store.blobs.size(digest)
            except Exception:  # noqa: BLE001 - raced with another delete
                size = 0
            if not dry_run:
                store.blobs.delete(digest)
            report.blobs_removed.append(key)
            report.bytes_freed += size
        for (chain_id,) in db.execute("SELECT chain_id FROM snapshots").fetchall():
            key = SNAPSHOT_PREFIX + str(chain_id)
            if key in live:
                continue
            report.snapshots_removed.append(str(chain_id))
            if not dry_run:
                path = store.snapshot_path(Digest.parse(str(chain_id)))
                # remove_tree never follows symlinks, nor recurses on depth.
                with contextlib.suppress(OSError):
                    remove_tree(path)
                db.execute("DELETE FROM snapshots WHERE chain_id=?", (chain_id,))
        if cache and not dry_run:
            report.cache_removed = db.execute("DELETE FROM build_cache").rowcount
        if not dry_run:
            for (key, layer) in db.execute("SELECT key, layer FROM build_cache").fetchall():
                if str(layer) not in live:
                    db.execute("DELETE FROM build_cache WHERE key=?", (key,))
                    report.cache_removed += 1
            # Records and edges of what is gone (or of parents no longer reachable).
            for (d,) in db.execute("SELECT digest FROM layers").fetchall():
                if str(d) not in live:
                    db.execute("DELETE FROM layers WHERE digest=?", (d,))
            for parent in list(edges):
                if parent not in live:
                    db.execute("DELETE FROM refs WHERE parent=?", (parent,))
    if not dry_run:
        report.ingest_removed = store.blobs.sweep_ingest()
    return report



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
        roots: set[str] = set()
        roots.update(str(r[0]) for r in db.execute("SELECT digest FROM tags"))
        roots.update(str(r[0]) for r in db.execute("SELECT digest FROM images"))
        roots.update(str(r[0]) for r in db.execute(
            "SELECT key FROM lease_resources WHERE lease != ?", (lease_id or "",)))
        edges: dict[str, list[str]] = {}
        for parent, child in db.execute("SELECT parent, child FROM refs"):
            edges.setdefault(str(parent), []).append(str(child))
        live = reachable(roots, edges)
        for key in sorted(wanted - live):
            if store.blobs.delete(Digest.parse(key)):
                removed.append(key)
            db.execute("DELETE FROM layers WHERE digest=?", (key,))
            db.execute("DELETE FROM refs WHERE parent=?", (key,))
    return removed
