"""Store a changeset as a layer blob: write, hash both streams, commit under a lease.

Used by every room that makes layers (import, build steps, ``run --commit``), so the
order that keeps gc away — name the blob in the lease, *then* rename it into place — is
written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lamina.digest import Digest
from lamina.layer.changes import Changeset
from lamina.layer.chunkmap import ChunkMap, chunk_map, read_toc, record_contents
from lamina.layer.compress import Writable
from lamina.layer.options import Compression, LayerOptions
from lamina.layer.tarwriter import TarInfo, write_changeset, write_tree
from lamina.store.store import Lease, Store


@dataclass(frozen=True)
class StoredLayer:
    digest: Digest          # of the compressed blob
    size: int               # compressed bytes
    diff_id: Digest         # of the uncompressed tar
    compression: Compression
    annotations: Mapping[str, str] = field(default_factory=dict)  # for its descriptor


def commit_changeset(store: Store, lease: Lease, changes: Changeset | Path,
                     options: LayerOptions, media_type: str) -> StoredLayer:
    """Write ``changes`` (or, given a directory, all of it — streamed, so the walk
    overlaps compression) as a layer into the store and record digest ↔ diff_id."""
    produce: Callable[[Writable], TarInfo]
    if isinstance(changes, Path):
        root = changes
        produce = lambda out: write_tree(root, out, options)  # noqa: E731
    else:
        cs = changes
        produce = lambda out: write_changeset(cs, out, options)  # noqa: E731
    return commit_layer(store, lease, produce, options, media_type)


def commit_layer(store: Store, lease: Lease, produce: Callable[[Writable], TarInfo],
                 options: LayerOptions, media_type: str) -> StoredLayer:
    """Store the layer ``produce(out)`` writes (any tar writer of this room: a
    changeset, a tree, squashed layers) and record digest ↔ diff_id."""
    cmap: ChunkMap | None = None
    with store.blobs.writer() as w:
        info = produce(w)
        lease.add(w.digest)  # before it becomes visible: gc can never take it
        size = w.count
        digest = w.finish()
        if info.spans:
            # A chunked layer is kept as its frames (the point of the format: images
            # that share files share them on disk too).  Costs a file and an fsync per
            # new frame (design-notes, Store: Chunks).  The TOC is read back from what
            # was written to learn which frame holds which content.
            toc = read_toc(w.pread, info.annotations, size)
            cmap = chunk_map(toc, size) if toc is not None else None
        w.publish(cmap.spans if cmap is not None else None)
    if cmap is not None:
        record_contents(store, digest, cmap)
    store.meta.add_layer(str(digest), str(info.diff_id), media_type, size)
    store.meta.set_unpacked_size(str(info.diff_id), info.uncompressed_size)  # known here
    # Made here from this very tar: checked by construction (load and fsck skip it).
    store.meta.add_verified_layer(str(digest), str(info.diff_id))
    return StoredLayer(digest, size, info.diff_id, options.compression, info.annotations)
