"""Check a store: re-hash every blob and chunk, find references to what is missing.

A blob kept as chunks is re-hashed whole (read back through its recipe), and every
chunk against its own name; a damaged chunk is reported with every blob whose recipe
names it.

``repair`` removes corrupt blobs, then every record that names something missing:
dangling tags, image records whose manifest or blobs are gone, layer and snapshot
records without content.  After a repair, a second check is clean.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lamina.digest import Digest
from lamina.errors import LaminaError
from lamina.store.gc import SNAPSHOT_PREFIX, reachable
from lamina.store.store import Store


@dataclass
class FsckReport:
    blobs_checked: int = 0
    chunks_checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    corrupt_chunks: dict[str, list[str]] = field(default_factory=dict)  # chunk → its blobs
    dangling: list[str] = field(default_factory=list)   # human-readable problems
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.corrupt and not self.dangling and not self.corrupt_chunks


def _check_blob(store: Store, digest: Digest) -> bool:
    try:
        with store.blobs.open(digest) as r:
            r.verify()
    except LaminaError:
        return False
    return True


def _check_chunk(store: Store, digest: Digest) -> bool:
    try:
        with store.blobs.chunks.open_chunk(digest) as r:
            r.verify()
    except LaminaError:
        return False
    except OSError:
        return False
    return True


def _check_chunks(store: Store, report: FsckReport, repair: bool) -> None:
    """Re-hash every chunk; name the blobs that use a damaged one; with ``repair``
    remove it (its blobs are corrupt too, and go with the corrupt blobs)."""
    chunks = store.blobs.chunks
    digests = list(chunks.chunks())
    for name, why in sorted(chunks.packs.damaged.items()):
        report.dangling.append(why)
        if repair:
            # What it held is unreadable anyway: the blobs needing it are found corrupt
            # below and go with the corrupt blobs.
            chunks.remove_pack(name)
            report.repaired.append(f"removed pack {name} (its index was damaged)")
    report.chunks_checked = len(digests)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda d: _check_chunk(store, d), digests))
    bad = [d for d, ok in zip(digests, results, strict=True) if not ok]
    if not bad:
        return
    used, _ = chunks.users(chunks.recipes())
    for digest in bad:
        report.corrupt_chunks[str(digest)] = sorted(used.get(str(digest), []))
        if repair:
            chunks.forget_chunk(digest)
            report.repaired.append(f"removed corrupt chunk {digest}")


def check(store: Store, repair: bool = False) -> FsckReport:
    report = FsckReport()
    _check_chunks(store, report, repair)
    digests = list(store.blobs.list())
    report.blobs_checked = len(digests)
    # hashlib releases the GIL: two threads keep both cores hashing.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda d: _check_blob(store, d), digests))
    corrupt: set[str] = set()
    for digest, ok in zip(digests, results, strict=True):
        if not ok:
            corrupt.add(str(digest))
            report.corrupt.append(str(digest))
            if repair:
                store.blobs.delete(digest)
                report.repaired.append(f"removed corrupt blob {digest}")

    def present(key: str) -> bool:
        # Looked up now, not taken from the list hashed above: another process may have
        # imported since, and what it wrote is not dangling.
        return key not in corrupt and store.blobs.has(Digest.parse(key))

    meta = store.meta
    # One transaction: no writer can add an image between reading and repairing.
    with meta.transaction() as db:
        edges: dict[str, list[str]] = {}
        for parent, child in db.execute("SELECT parent, child FROM refs"):
            edges.setdefault(str(parent), []).append(str(child))
        snapshot_rows = [(str(r[0])) for r in db.execute("SELECT chain_id FROM snapshots")]
        broken_images: set[str] = set()
        for (image,) in db.execute("SELECT digest FROM images").fetchall():
            missing = sorted(k for k in reachable([str(image)], edges)
                             if not k.startswith(SNAPSHOT_PREFIX) and not present(k))
            if missing:
                broken_images.add(str(image))
                report.dangling.append(f"image {image} is missing {', '.join(missing)}")
        tags = [(str(n), str(d)) for n, d in db.execute("SELECT name, digest FROM tags")]
        for name, target in tags:
            if not present(target):
                report.dangling.append(f"tag {name} points at missing {target}")
        layers = [str(r[0]) for r in db.execute("SELECT digest FROM layers")]
        for key in layers:
            if not present(key):
                report.dangling.append(f"layer record {key} has no blob")
        for chain_id in snapshot_rows:
            if not store.snapshot_path(Digest.parse(chain_id)).is_dir():
                report.dangling.append(f"snapshot {chain_id} has no directory")
        if repair and report.dangling:
            for name, target in tags:
                if not present(target) or target in broken_images:
                    db.execute("DELETE FROM tags WHERE name=?", (name,))
                    report.repaired.append(f"untagged {name}")
            for image_key in broken_images:
                db.execute("DELETE FROM images WHERE digest=?", (image_key,))
                db.execute("DELETE FROM refs WHERE parent=?", (image_key,))
                report.repaired.append(f"removed image record {image_key}")
            for key in layers:
                if not present(key):
                    db.execute("DELETE FROM layers WHERE digest=?", (key,))
            for chain_id in snapshot_rows:
                path = store.snapshot_path(Digest.parse(chain_id))
                if not path.is_dir():
                    db.execute("DELETE FROM snapshots WHERE chain_id=?", (chain_id,))
    return report
