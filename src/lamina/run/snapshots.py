"""Snapshots: each layer unpacked once, in a directory of its own, keyed by chain id.

The directory ``store.snapshot_path(chain_id)`` holds *only* that layer's content, with
its whiteouts in overlayfs form (a 0/0 character device for ``.wh.NAME``, the xattr
``trusted.overlay.opaque=y`` for ``.wh..wh..opq``), so that an image's snapshots, top
first, are the ``lowerdir`` of an overlay mount (containerd's overlay snapshotter
keeps one directory per layer the same way).  It is keyed by the layer's *chain id*
(image-spec config.md), not its diff_id: what a whiteout hides depends on the stack
below, and two images share a snapshot exactly when they share the stack up to it.

Lifecycle of one snapshot::

    ensure()  ─ extract into tmp/snap-<random> (fresh dir, same filesystem)
              ─ rename to snapshots/<chain hex>   (atomic; a concurrent ensure of the
                                                   same chain id loses the rename and
                                                   drops its copy: both got equal bytes)
              ─ meta.add_snapshot(chain id, parent chain id, diff_id, size)
              ─ refs owner -> "snapshot:<chain id>" when an image owns it
    gc        ─ removes snapshots no root reaches (store/gc.py), so whoever uses one
                must hold it: an owner edge (an image) or a lease (a running container)

Extraction checks each layer twice, as unpack does: its compressed digest, and the
uncompressed stream against the config's diff_id.

Identical files are kept once across all snapshots: extraction shares each regular file
through the store's file pool (store/pool.py: one inode per content + metadata, hard
links from the snapshots), whatever the layer format.  Sharing is safe because nothing
writes into a snapshot: an overlay copies a file up before the first write, and is
mounted with ``index=off`` (run/rootfs.py), so a copy-up never reaches another name of
the inode; ``lamina unpack`` and the walk snapshotter apply layers without the pool.
What the pool shows: a file's link count in a mount counts every snapshot that shares
it, and two identical files show the same inode number (as in an ostree checkout).

Needs root: whiteouts are device nodes and opaque markers ``trusted.*`` xattrs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from lamina.digest import Digest
from lamina.errors import LaminaError, StoreError
from lamina.image.config import chain_ids
from lamina.image.manifest import Descriptor
from lamina.layer import apply_layer
from lamina.layer.filepool import FileFacts
from lamina.layer.options import ApplyOptions
from lamina.store import pool, scratch
from lamina.store.gc import SNAPSHOT_PREFIX
from lamina.store.store import Store
from lamina.transport.base import ImageSource

_OVERLAY_XATTRS = "trusted.overlay."
# Files up to this size are hashed in memory before they are written, so one the pool
# has costs a link and no write; bigger ones are hashed while written and replaced.
_INLINE_LIMIT = 256 * 1024


def snapshot_key(chain_id: Digest | str) -> str:
    """The node that names a snapshot in the store's content graph (gc, leases)."""
    return f"{SNAPSHOT_PREFIX}{chain_id}"


class SnapshotPool:
    """The store's file pool (store/pool.py) as layer/filepool.py's ``FilePool``."""

    inline_limit = _INLINE_LIMIT

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key(facts: FileFacts) -> str:
        return pool.key(facts.digest, facts.mode, facts.uid, facts.gid, facts.mtime_ns,
                        facts.xattrs)

    def link(self, facts: FileFacts, path: str) -> bool:
        return pool.link(self.root, self.key(facts), path)

    def share(self, facts: FileFacts, path: str) -> None:
        pool.adopt(self.root, self.key(facts), path)

    def layer_links(self, path: str, st: os.stat_result) -> int:
        """The link count of a snapshot's regular file in its own layer: 1 if the
        inode is the pool's (only files with no other name in their layer are
        pooled), else what the file system says (layer/overlay.py's ``lower_links``)."""
        if st.st_nlink < 2 or not stat.S_ISREG(st.st_mode):
            return st.st_nlink
        try:
            entry = os.lstat(pool.entry_path(self.root, self.key(_facts_of(path, st))))
        except OSError:
            return st.st_nlink   # not the pool's (or unreadable): the count is the layer's
        return 1 if (entry.st_dev, entry.st_ino) == (st.st_dev, st.st_ino) else st.st_nlink


def _facts_of(path: str, st: os.stat_result) -> FileFacts:
    """What the pool keys a file on disk by (its content read once more: asked only
    for a file a container copied up, layer/overlay.py)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            h.update(block)
    try:
        names = [n for n in os.listxattr(path, follow_symlinks=False)
                 if not n.startswith(_OVERLAY_XATTRS)]
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        names = []
    xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))
    return FileFacts(h.hexdigest(), st.st_size, stat.S_IMODE(st.st_mode), st.st_uid,
                     st.st_gid, st.st_mtime_ns, xattrs)


class Snapshotter:
    """Makes and finds the per-layer snapshot directories of a store.

    ``share_files``: share identical files through the store's pool (the default; off
    only to measure what it saves, bench/bench_pool.py).
    """

    def __init__(self, store: Store, share_files: bool = True) -> None:
        self.store = store
        self.tmp_root = store.root / "tmp"
        self.apply_options = ApplyOptions(
            same_owner=True, devices=True, whiteout_format="overlay",
            pool=SnapshotPool(store.root) if share_files else None)

    def path(self, chain_id: Digest) -> Path:
        return self.store.snapshot_path(chain_id)

    def ensure(self, source: ImageSource, layers: Sequence[Descriptor],
               diff_ids: Sequence[Digest], owner: str | None = None,
               lease_id: str | None = None) -> list[Path]:
        """The snapshot directory of every layer, bottom to top, extracting the missing.

        ``owner`` (a manifest digest) gets a refs edge to each snapshot, so gc keeps
        them while that image lives.  ``lease_id`` (a store lease) protects them for
        the lease's life, e.g. while a container runs on them: it is registered before
        a snapshot is looked at, so a gc running meanwhile cannot remove it.
        """
        if len(layers) != len(diff_ids):
            raise StoreError(f"{len(layers)} layers but {len(diff_ids)} diff_ids")
        if os.geteuid() != 0:
            raise StoreError("overlay snapshots need root (whiteouts are device nodes); "
                             "use the walk snapshotter")
        chains = chain_ids(diff_ids)
        meta = self.store.meta
        if lease_id is not None:
            for chain in chains:
                meta.add_lease_resource(lease_id, snapshot_key(chain))
        out: list[Path] = []
        parent: Digest | None = None
        for layer, diff_id, chain in zip(layers, diff_ids, chains, strict=True):
            path = self.path(chain)
            if not (path.is_dir() and meta.has_snapshot(str(chain))):
                self._extract(source, layer, diff_id, chain, parent)
            out.append(path)
            parent = chain
        if owner is not None:
            meta.add_refs(owner, [snapshot_key(c) for c in chains])
        return out

    def retain(self, owner: str, diff_ids: Sequence[Digest]) -> None:
        """Let image ``owner`` keep the snapshots of its layers that exist (a build
        calls this once it has recorded an image whose stack it ran on)."""
        keys = [snapshot_key(c) for c in chain_ids(diff_ids)
                if self.store.meta.has_snapshot(str(c))]
        if keys:
            self.store.meta.add_refs(owner, keys)

    def _extract(self, source: ImageSource, layer: Descriptor, diff_id: Digest,
                 chain: Digest, parent: Digest | None) -> None:
        final = self.path(chain)
        try:
            self.tmp_root.mkdir(exist_ok=True)
            final.parent.mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot make a snapshot in {self.tmp_root}: "
                             f"{e.strerror or e}") from None
        # Owned by this process (store/scratch.py): a killed extraction is gc's to remove.
        work = scratch.make_dir(self.tmp_root, "snap-")
        tmp = work.path
        try:
            # The layer root is the merged root's directory when nothing above it has
            # one: make it what an unpacked root is, not mkdtemp's 0700.
            os.chmod(tmp, 0o755)
            with source.open_blob(layer) as reader:
                applied = apply_layer(reader, tmp, expected_diff_id=diff_id,
                                      options=self.apply_options)
                reader.verify()
            try:
                os.rename(tmp, final)
            except OSError as e:
                # Another ensure renamed the same chain id first (same bytes): keep
                # theirs.  A leftover from a crash between rename and the record is
                # complete too (rename is the last step), so it is just recorded.
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise StoreError(f"cannot store snapshot {chain.short}: "
                                     f"{e.strerror or e}") from None
        except LaminaError as e:
            raise e.context(f"snapshot of layer {layer.digest.short}") from None
        finally:
            work.remove()
        self.store.meta.add_snapshot(str(chain), None if parent is None else str(parent),
                                     str(diff_id), applied.uncompressed_size)
