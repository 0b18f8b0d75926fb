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

Deep stacks (``stack``): one overlay mount takes at most ``MAX_LOWERS`` lower dirs
(measured on Linux 6.18 with 4 KiB pages: 222 fit in the mount data as /proc/self/fd
names, and the kernel refuses more than 500 in any case, "too many lower directories,
limit is 500", fs/overlayfs OVL_MAX_STACK).  A deeper image gets a *merged* snapshot of
its bottom layers: the flattened tree of that prefix (whiteouts applied, so none left),
keyed by ``merged_id(chain id of the prefix)`` -- a digest of its own, because the chain
id already names the per-layer snapshot of the prefix's top layer.  It is a snapshot
like any other for gc (an owner edge or a lease keeps it), fsck and df.  The prefix is cut
at a multiple of ``MERGE_STEP`` layers, so images that grow by a few layers per release
(or that share a deep base) share one merged snapshot instead of each making its own.
Its files come from the same file pool, so merging costs directory entries, not data,
for every file a per-layer snapshot already holds.

Needs root: whiteouts are device nodes and opaque markers ``trusted.*`` xattrs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import replace
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
# The lower dirs of one overlay mount, at most: under the 222 that fit as /proc/self/fd
# names in one page of mount data (run/rootfs.py), well under the kernel's 500.
MAX_LOWERS = 200
# A merged prefix is a multiple of this many layers (see the module docstring).
MERGE_STEP = 100


def merge_point(layers: int, max_lowers: int = MAX_LOWERS, step: int = MERGE_STEP) -> int:
    """How many bottom layers of a ``layers``-deep image go into one merged snapshot so
    that it and the rest fit in ``max_lowers`` lower dirs: 0 when all fit; else the
    smallest multiple of ``step`` that leaves at most ``max_lowers - 1`` on top."""
    if layers <= max_lowers:
        return 0
    over = layers - (max_lowers - 1)
    return -(-over // step) * step


def merged_id(chain_id: Digest) -> Digest:
    """The key of the merged snapshot of the stack ``chain_id`` names."""
    return Digest("sha256", hashlib.sha256(f"lamina-merged-1 {chain_id}".encode()).hexdigest())


def _need_root() -> None:
    if os.geteuid() != 0:
        raise StoreError("overlay snapshots need root (whiteouts are device nodes); "
                         "use the walk snapshotter")


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
        return self._ensure(source, layers, diff_ids, 0, owner, lease_id)

    def stack(self, source: ImageSource, layers: Sequence[Descriptor],
              diff_ids: Sequence[Digest], owner: str | None = None,
              lease_id: str | None = None, max_lowers: int = MAX_LOWERS) -> list[Path]:
        """The lower dirs of one overlay mount of the image, bottom to top: every
        layer's snapshot (``ensure``) when there are at most ``max_lowers``, else the
        merged snapshot of the bottom ``merge_point`` layers, then the snapshots of
        the rest.  ``owner`` and ``lease_id`` as for ``ensure``."""
        cut = merge_point(len(layers), max_lowers)
        if cut == 0:
            return self.ensure(source, layers, diff_ids, owner, lease_id)
        if len(layers) != len(diff_ids):
            raise StoreError(f"{len(layers)} layers but {len(diff_ids)} diff_ids")
        _need_root()
        chains = chain_ids(diff_ids)
        key = merged_id(chains[cut - 1])
        meta = self.store.meta
        if lease_id is not None:   # before looking, as ensure does
            meta.add_lease_resource(lease_id, snapshot_key(key))
        if not (self.path(key).is_dir() and meta.has_snapshot(str(key))):
            self._merge(source, layers[:cut], diff_ids[:cut], chains[cut - 1], key)
        if owner is not None:
            meta.add_refs(owner, [snapshot_key(key)])
        return [self.path(key), *self._ensure(source, layers, diff_ids, cut, owner, lease_id)]

    def _ensure(self, source: ImageSource, layers: Sequence[Descriptor],
                diff_ids: Sequence[Digest], start: int, owner: str | None,
                lease_id: str | None) -> list[Path]:
        """``ensure`` for the layers from ``start`` up (their chain ids are the whole
        stack's)."""
        _need_root()
        chains = chain_ids(diff_ids)
        meta = self.store.meta
        if lease_id is not None:
            meta.add_lease_resources(lease_id, [snapshot_key(c) for c in chains[start:]])
        out: list[Path] = []
        parent: Digest | None = chains[start - 1] if start else None
        for layer, diff_id, chain in zip(layers[start:], diff_ids[start:], chains[start:],
                                         strict=True):
            path = self.path(chain)
            if not (path.is_dir() and meta.has_snapshot(str(chain))):
                self._extract(source, layer, diff_id, chain, parent)
            out.append(path)
            parent = chain
        if owner is not None:
            meta.add_refs(owner, [snapshot_key(c) for c in chains[start:]])
        return out

    def retain(self, owner: str, diff_ids: Sequence[Digest]) -> None:
        """Let image ``owner`` keep the snapshots of its layers that exist, and its
        merged snapshot (a build calls this once it has recorded an image whose stack
        it ran on)."""
        chains = chain_ids(diff_ids)
        cut = merge_point(len(chains))
        candidates = chains + ([merged_id(chains[cut - 1])] if cut else [])
        keys = [snapshot_key(c) for c in candidates if self.store.meta.has_snapshot(str(c))]
        if keys:
            self.store.meta.add_refs(owner, keys)

    @contextlib.contextmanager
    def _fresh_dir(self, key: Digest) -> Iterator[Path]:
        """A fresh directory that becomes snapshot ``key`` when the block ends without
        an error (a rename: atomic), and is removed on any."""
        final = self.path(key)
        try:
            self.tmp_root.mkdir(exist_ok=True)
            final.parent.mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot make a snapshot in {self.tmp_root}: "
                             f"{e.strerror or e}") from None
        # Owned by this process (store/scratch.py): a killed extraction is gc's to remove.
        work = scratch.make_dir(self.tmp_root, "snap-")
        try:
            # The layer root is the merged root's directory when nothing above it has
            # one: make it what an unpacked root is, not mkdtemp's 0700.
            os.chmod(work.path, 0o755)
            yield work.path
            try:
                os.rename(work.path, final)
            except OSError as e:
                # Another ensure renamed the same key first (same bytes): keep theirs.
                # A leftover from a crash between rename and the record is complete
                # too (rename is the last step), so it is just recorded.
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise StoreError(f"cannot store snapshot {key.short}: "
                                     f"{e.strerror or e}") from None
        finally:
            work.remove()

    def _extract(self, source: ImageSource, layer: Descriptor, diff_id: Digest,
                 chain: Digest, parent: Digest | None) -> None:
        try:
            with self._fresh_dir(chain) as tmp, source.open_blob(layer) as reader:
                applied = apply_layer(reader, tmp, expected_diff_id=diff_id,
                                      options=self.apply_options)
                reader.verify()
        except LaminaError as e:
            raise e.context(f"snapshot of layer {layer.digest.short}") from None
        self.store.meta.add_snapshot(str(chain), None if parent is None else str(parent),
                                     str(diff_id), applied.uncompressed_size)

    def _merge(self, source: ImageSource, layers: Sequence[Descriptor],
               diff_ids: Sequence[Digest], chain: Digest, key: Digest) -> None:
        """Make the merged snapshot ``key``: ``layers`` applied in order into one
        tree, deleting what their whiteouts name (nothing lies below the bottom of a
        stack, so none are kept), each layer checked as ``_extract`` checks it."""
        options = replace(self.apply_options, whiteout_format="delete")
        total = 0
        with self._fresh_dir(key) as tmp:
            for i, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True), 1):
                try:
                    with source.open_blob(layer) as reader:
                        applied = apply_layer(reader, tmp, expected_diff_id=diff_id,
                                              options=options)
                        reader.verify()
                except LaminaError as e:
                    raise e.context(f"merged snapshot of {len(layers)} layers: layer {i} "
                                    f"({layer.digest.short})") from None
                total += applied.uncompressed_size
        # parent: the stack it flattens; diff_id: not a layer's, so that no layer size
        # is ever read from this row (meta.unpacked_sizes).
        self.store.meta.add_snapshot(str(key), str(chain), f"merged:{chain}", total)
