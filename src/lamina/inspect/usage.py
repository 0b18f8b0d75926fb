"""``lamina df``: where the store's space goes, as ``docker system df [-v]`` reports it.

Sizes are of what is on disk: blobs as stored (compressed layers; a blob kept as
chunks by its recipe, each chunk counted once in the Blobs row), snapshots by the
unpacked size recorded when they were made.  ``storage`` sets the blobs' logical bytes
(each at its size, as readers see it) against their physical bytes and gives the ratio:
what keeping each chunk once saves.  Per image (one row per tag, untagged
images once, as ``docker system df -v``):

    size         the image's config + layer blobs (as ``lamina images`` shows it)
    shared size  the blobs of it that at least one *other* image also uses
    unique size  size - shared size: what removing only this image would free

An index (multi-platform image) counts the index, each child manifest and config, and
the layers of every platform the store holds.

Summary rows (TYPE, TOTAL, ACTIVE, SIZE, RECLAIMABLE):

    Images       image records; active = tagged; size = distinct blobs they reach;
                 reclaimable = the blobs only untagged images reach (``rmi`` frees them)
    Blobs        every blob; active = reachable from a root (tag, image, lease); size =
                 physical (whole files, recipes, chunks); reclaimable = what ``lamina gc``
                 frees of them
    Snapshots    unpacked layer stacks; active = reachable; reclaimable = what gc removes;
                 size = their unpacked (tar) size, as if no file were shared
    Snapshot pool  files kept once for all snapshots (store/pool.py); active = linked
                 by a snapshot; size = each file once; reclaimable = what gc removes
    Build cache  entries; active = whose layer an image uses; size = their distinct
                 layers; reclaimable = the layers no image uses (``gc --cache`` frees them)
    Build cache mounts  directories of ``RUN --mount=type=cache`` (store/cachemounts.py),
                 one per instance; active = held by a running build; size = their files;
                 reclaimable = the rest (``builder prune`` and ``gc --cache`` free them)
    Temporary files  entries of the store's tmp/ (work areas of builds, runs, snapshot
                 extraction, imports) and ingest/ (blobs being written: a killed pull's,
                 load's or import's partial files); active = of a live process (and ingest
                 files younger than a minute: gc cannot tell them from one about to be
                 locked); reclaimable = those of killed processes (``lamina gc`` removes them)

Reclaimable blobs and snapshots come from ``gc.collect(dry_run=True)``, so ``df`` and
``gc`` can never disagree.

Snapshot space (``SnapshotSpace``): logical = the Snapshots row's size; saved = the
bytes the pool keeps once instead of once per snapshot (an entry linked by n snapshot
files saves n - 1 copies); physical = logical - saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lamina.digest import Digest
from lamina.errors import LaminaError
from lamina.image.reference import Reference
from lamina.store import pool, scratch
from lamina.store.blobs import BlobSpace
from lamina.store.cachemounts import CacheMountInfo, CacheMounts
from lamina.store.gc import collect, reachable
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import resolve_image


@dataclass(frozen=True)
class UsageRow:
    type: str
    total: int
    active: int
    size: int
    reclaimable: int

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "total": self.total, "active": self.active,
                "size": self.size, "reclaimable": self.reclaimable}


@dataclass(frozen=True)
class ImageUsage:
    repository: str
    tag: str
    digest: str
    image_id: str | None
    created: str | None
    size: int
    shared_size: int
    unique_size: int
    layers: int

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "tag": self.tag, "digest": self.digest,
                "id": self.image_id, "created": self.created, "size": self.size,
                "shared_size": self.shared_size, "unique_size": self.unique_size,
                "layers": self.layers}


@dataclass(frozen=True)
class CacheUsage:
    key: str
    layer: str
    size: int
    created_by: str
    in_use: bool      # an image uses its layer

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "layer": self.layer, "size": self.size,
                "created_by": self.created_by, "in_use": self.in_use}


@dataclass(frozen=True)
class SnapshotSpace:
    logical: int     # unpacked size of every snapshot, nothing shared
    physical: int    # less what the file pool keeps once
    saved: int

    def to_json(self) -> dict[str, Any]:
        return {"logical": self.logical, "physical": self.physical, "saved": self.saved}


@dataclass
class Usage:
    summary: list[UsageRow]
    images: list[ImageUsage] = field(default_factory=list)
    cache: list[CacheUsage] = field(default_factory=list)
    storage: BlobSpace = field(default_factory=lambda: BlobSpace(0, 0, 0, 0, 0))
    snapshot_space: SnapshotSpace = SnapshotSpace(0, 0, 0)
    cache_mounts: list[CacheMountInfo] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"summary": [r.to_json() for r in self.summary],
                "storage": self.storage.to_json(),
                "images": [r.to_json() for r in self.images],
                "build_cache": [r.to_json() for r in self.cache],
                "snapshot_space": self.snapshot_space.to_json(),
                "cache_mounts": [{"id": m.id, "instance": m.instance, "size": m.size,
                                  "files": m.files, "in_use": m.in_use}
                                 for m in self.cache_mounts]}


def _size(store: Store, digest: str, sizes: dict[str, int]) -> int:
    got = sizes.get(digest)
    if got is None:
        try:
            got = store.blobs.size(Digest.parse(digest))
        except LaminaError:
            got = 0
        except OSError:
            got = 0
        sizes[digest] = got
    return got


def _stored(store: Store, digest: str) -> int:
    """The bytes gc frees with the blob itself (a recipe's chunks are counted apart)."""
    try:
        return store.blobs.stored_size(Digest.parse(digest))
    except LaminaError:
        return 0


def _blobs(nodes: Iterable[str]) -> set[str]:
    return {n for n in nodes if not n.startswith("snapshot:")}


def disk_usage(store: Store) -> Usage:
    """The store's space; per image and per build-cache entry too."""
    meta = store.meta
    edges: dict[str, list[str]] = {}
    for parent, child in meta.all_refs():
        edges.setdefault(parent, []).append(child)
    sizes: dict[str, int] = {}
    all_blobs = [str(d) for d in store.blobs.list()]
    for d in all_blobs:
        _size(store, d, sizes)

    records = meta.images()
    tags = meta.tags()
    tagged = {t.digest for t in tags}
    # What each image reaches (its own manifest/index included), blobs only.
    reach = {r.digest: _blobs(reachable([r.digest], edges)) for r in records}
    users: dict[str, int] = {}
    for blobs in reach.values():
        for b in blobs:
            users[b] = users.get(b, 0) + 1

    report = collect(store, dry_run=True)
    mounts = CacheMounts(store.root).instances()
    space = dataclasses.replace(store.blobs.space(), pending=len(meta.chunk_pending()))
    temp = scratch.usage(store.root / "tmp")
    ingest = store.blobs.ingest_usage()
    gone_snapshots = set(report.snapshots_removed)
    snapshots = meta.snapshots()
    pooled = pool.usage(store.root)
    logical = sum(s[3] for s in snapshots)
    snap_space = SnapshotSpace(logical, max(0, logical - pooled.saved), pooled.saved)

    in_images: set[str] = set().union(*reach.values()) if reach else set()
    in_tagged: set[str] = set().union(*(reach[d] for d in reach if d in tagged)) \
        if tagged & set(reach) else set()
    dangling_only = in_images - in_tagged

    cache_rows: list[CacheUsage] = []
    cache_layers: dict[str, bool] = {}
    for entry in meta.cache_entries():
        used = entry.layer in in_images
        cache_rows.append(CacheUsage(entry.key, entry.layer, entry.size, entry.created_by,
                                     used))
        cache_layers[entry.layer] = used
    summary = [
        UsageRow("Images", len(records), sum(1 for r in records if r.digest in tagged),
                 sum(_size(store, b, sizes) for b in in_images),
                 sum(_size(store, b, sizes) for b in dangling_only)),
        UsageRow("Blobs", len(all_blobs), len(all_blobs) - len(report.blobs_removed),
                 space.physical,
                 sum(_stored(store, d) for d in report.blobs_removed)
                 + report.chunk_bytes_freed),
        UsageRow("Snapshots", len(snapshots),
                 sum(1 for s in snapshots if s[0] not in gone_snapshots),
                 sum(s[3] for s in snapshots),
                 sum(s[3] for s in snapshots if s[0] in gone_snapshots)),
        UsageRow("Snapshot pool", pooled.entries, pooled.entries - report.pool_removed,
                 pooled.size, report.pool_bytes_freed),
        UsageRow("Build cache", len(cache_rows), sum(1 for c in cache_rows if c.in_use),
                 sum(_size(store, layer, sizes) for layer in cache_layers),
                 sum(_size(store, layer, sizes) for layer, used in cache_layers.items()
                     if not used)),
        UsageRow("Build cache mounts", len(mounts), sum(1 for m in mounts if m.in_use),
                 sum(m.size for m in mounts), sum(m.size for m in mounts if not m.in_use)),
        UsageRow("Temporary files", temp.count + ingest[0],
                 temp.count - temp.reclaimable_count + ingest[0] - report.ingest_removed,
                 temp.size + ingest[1], temp.reclaimable_size + report.ingest_bytes_freed),
    ]

    source = StoreTransport(store)
    images: list[ImageUsage] = []
    names: dict[str, list[str]] = {}
    for t in tags:
        names.setdefault(t.digest, []).append(t.name)
    for rec in records:
        blobs = reach[rec.digest]
        # The manifest itself is not counted, as ``lamina images`` does not count it.
        own = blobs - {rec.digest}
        size = sum(_size(store, b, sizes) for b in own)
        shared = sum(_size(store, b, sizes) for b in own if users.get(b, 0) > 1)
        image_id: str | None = None
        created: str | None = None
        layers = 0
        try:
            image = resolve_image(source, source.resolve(rec.digest))
            image_id, created, layers = image.image_id, image.config.created, len(
                image.manifest.layers)
        except LaminaError:
            pass  # broken or foreign-platform images still take space
        tagged_as: list[str | None] = [*sorted(names.get(rec.digest, []))]
        for name in tagged_as or [None]:
            if name is None:
                repo, tag = "<none>", "<none>"
            else:
                ref = Reference.parse(name)
                repo, tag = ref.familiar_name, ref.tag or "<none>"
            images.append(ImageUsage(repo, tag, rec.digest, image_id, created, size, shared,
                                     size - shared, layers))
    images.sort(key=lambda r: (r.repository, r.tag, r.digest))
    cache_rows.sort(key=lambda c: (c.created_by, c.key))
    return Usage(summary, images, cache_rows, storage=space, snapshot_space=snap_space,
                 cache_mounts=mounts)
