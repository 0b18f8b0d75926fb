"""Check a store: re-hash every blob, find references to what is missing.

``repair`` removes corrupt blobs, then every record that names something missing:
dangling tags, image records whose manifest or blobs are gone, layer and snapshot
records without content.  After a repair, a second check is clean.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lamina.digest import Digest
from lamina.errors import LaminaError
from lamina.store.gc import SNAPSHOT_PREFIX, reachable
from lamina.store.store import Store


@dataclass
class FsckReport:
    blobs_checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)   # human-readable problems
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.corrupt and not self.dangling


def _check_blob(store: Store, digest: Digest) -> bool:
    try:
        with store.blobs.open(digest) as r:
            r.verify()
    except LaminaError:
        return False
    return True


def check(store: Store, repair: bool = False) -> FsckReport:
    report = FsckReport()
    digests = list(store.blobs.list())
    report.blobs_checked = len(digests)
    # hashlib releases the GIL: two threads keep both cores hashing.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda d: _check_blob(store, d), digests))
    present = set()
    for digest, ok in zip(digests, results, strict=True):
        if ok:
            present.add(str(digest))
        else:
            report.corrupt.append(str(digest))
            if repair:
                store.blobs.delete(digest)
                report.repaired.append(f"removed corrupt blob {digest}")

    meta = store.meta
    edges: dict[str, list[str]] = {}
    for parent, child in meta.all_refs():
        edges.setdefault(parent, []).append(child)
    snapshots = {SNAPSHOT_PREFIX + s[0] for s in meta.snapshots()}

    def exists(key: str) -> bool:
        if key.startswith(SNAPSHOT_PREFIX):
            return key in snapshots
        return key in present

    broken_images: set[str] = set()
    for image in meta.images():
        missing = sorted(k for k in reachable([image.digest], edges)
                         if not exists(k) and not k.startswith(SNAPSHOT_PREFIX))
        if missing:
            broken_images.add(image.digest)
            report.dangling.append(f"image {image.digest} is missing {', '.join(missing)}")
    for tag in meta.tags():
        if tag.digest not in present:
            report.dangling.append(f"tag {tag.name} points at missing {tag.digest}")
    for layer in meta.layers():
        if layer.digest not in present:
            report.dangling.append(f"layer record {layer.digest} has no blob")
    for chain_id, _parent, _diff, _size in meta.snapshots():
        if not store.snapshot_path(Digest.parse(chain_id)).is_dir():
            report.dangling.append(f"snapshot {chain_id} has no directory")

    if repair and report.dangling:
        with meta.transaction() as db:
            for tag in meta.tags():
                if tag.digest not in present or tag.digest in broken_images:
                    db.execute("DELETE FROM tags WHERE name=?", (tag.name,))
                    report.repaired.append(f"untagged {tag.name}")
            for digest in broken_images:
                db.execute("DELETE FROM images WHERE digest=?", (digest,))
                db.execute("DELETE FROM refs WHERE parent=?", (digest,))
                report.repaired.append(f"removed image record {digest}")
            for layer in meta.layers():
                if layer.digest not in present:
                    db.execute("DELETE FROM layers WHERE digest=?", (layer.digest,))
            for chain_id, *_ in meta.snapshots():
                path = store.snapshot_path(Digest.parse(chain_id))
                if not path.is_dir():
                    db.execute("DELETE FROM snapshots WHERE chain_id=?", (chain_id,))
                    shutil.rmtree(path, ignore_errors=True)
    return report
