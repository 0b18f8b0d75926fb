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

Needs root: whiteouts are device nodes and opaque markers ``trusted.*`` xattrs.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lamina.digest import Digest
from lamina.errors import LaminaError, StoreError
from lamina.image.config import chain_ids
from lamina.image.manifest import Descriptor
from lamina.layer import apply_layer
from lamina.layer.options import ApplyOptions
from lamina.store.gc import SNAPSHOT_PREFIX
from lamina.store.rmtree import remove_tree
from lamina.store.store import Store
from lamina.transport.base import ImageSource

_OVERLAY_APPLY = ApplyOptions(same_owner=True, devices=True, whiteout_format="overlay")


def snapshot_key(chain_id: Digest | str) -> str:
    """The node that names a snapshot in the store's content graph (gc, leases)."""
    return f"{SNAPSHOT_PREFIX}{chain_id}"


class Snapshotter:
    """Makes and finds the per-layer snapshot directories of a store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tmp_root = store.root / "tmp"

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
            tmp = Path(tempfile.mkdtemp(prefix="snap-", dir=self.tmp_root))
        except OSError as e:
            raise StoreError(f"cannot make a snapshot in {self.tmp_root}: "
                             f"{e.strerror or e}") from None
        try:
            # The layer root is the merged root's directory when nothing above it has
            # one: make it what an unpacked root is, not mkdtemp's 0700.
            os.chmod(tmp, 0o755)
            with source.open_blob(layer) as reader:
                applied = apply_layer(reader, tmp, expected_diff_id=diff_id,
                                      options=_OVERLAY_APPLY)
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
            remove_tree(tmp)
        self.store.meta.add_snapshot(str(chain), None if parent is None else str(parent),
                                     str(diff_id), applied.uncompressed_size)
