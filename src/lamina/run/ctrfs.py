"""A container's root filesystem: kept in the store until the container is removed.

``run/rootfs.py`` makes a rootfs for one process in ``tmp/`` and removes it when the
process ends (a build step, ``run --rm``).  A container's must outlive the process that
made it — ``commit`` and ``start``-like uses read it after the container exited — so it
lives in ``containers/<id>/`` with the same two kinds and the same changesets:

``overlay`` (root)  ``upper/`` and ``work/`` over the image's snapshots, mounted on
                    ``merged/`` while the container runs (and while it is committed);
                    the snapshots are the container's gc roots (store/containers.py).
``walk`` (anyone)   the layers applied into ``base/`` and copied to ``rootfs/``;
                    changes are ``diff_trees(base, rootfs)``.

Nothing here is locked: the container's monitor (run/monitor.py) owns the directory
while it runs, and ``lamina rm`` removes it once nothing does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.errors import StoreError
from lamina.layer import ApplyOptions, Changeset, apply_layer, diff_trees
from lamina.layer.overlay import changes_from_upper
from lamina.run.rootfs import (
    SnapshotterMode,
    copy_tree,
    fresh_ctime,
    mount_overlay,
    mounts_under,
    overlay_problem,
    unmount,
)
from lamina.run.snapshots import SnapshotPool, Snapshotter
from lamina.store.rmtree import remove_tree
from lamina.store.store import Store
from lamina.transport.base import ImageSource
from lamina.transport.resolve import ResolvedImage


@dataclass(frozen=True)
class ContainerRootfs:
    """The root filesystem in ``dir`` (see the module docstring); ``spec()`` is what the
    container record keeps to find it again (``from_spec``)."""

    dir: Path
    kind: str                    # "overlay" or "walk"
    lowers: tuple[Path, ...] = ()

    @property
    def path(self) -> Path:
        return self.dir / ("merged" if self.kind == "overlay" else "rootfs")

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "lowers": [os.fspath(p) for p in self.lowers]}

    @classmethod
    def from_spec(cls, directory: Path, spec: dict[str, Any]) -> ContainerRootfs:
        return cls(directory, str(spec["kind"]), tuple(Path(p) for p in spec["lowers"]))

    @classmethod
    def create(cls, store: Store, source: ImageSource, image: ResolvedImage,
               directory: Path, mode: SnapshotterMode) -> ContainerRootfs:
        """Make the rootfs of a new container in ``directory`` (which exists, empty).
        The container's record must already name its snapshots as roots: they are
        extracted here, and gc must not take them meanwhile."""
        problem = overlay_problem(store) if mode != "walk" else "walk asked for"
        if problem is None:
            # stack: an image deeper than one overlay mount takes gets its bottom layers
            # as one merged snapshot (run/snapshots.py), as `run` without a container
            lowers = Snapshotter(store).stack(
                source, image.manifest.layers, image.config.diff_ids,
                owner=image.digest if store.meta.get_image(image.digest) else None)
            if not lowers:
                empty = directory / "empty"
                empty.mkdir(mode=0o755)
                lowers = [empty]
            for d in ("upper", "work", "merged"):
                (directory / d).mkdir()
            # The merged root directory is the upper dir's: give it the image's.
            top = lowers[-1].stat()
            os.chown(directory / "upper", top.st_uid, top.st_gid)
            os.chmod(directory / "upper", top.st_mode & 0o7777)
            return cls(directory, "overlay", tuple(lowers))
        if mode == "overlay":
            raise StoreError(f"cannot use the overlay snapshotter: {problem}; "
                             "use --snapshotter walk")
        base = directory / "base"
        base.mkdir(mode=0o755)
        os.chmod(base, 0o755)
        for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=True):
            with source.open_blob(layer) as reader:
                apply_layer(reader, base, expected_diff_id=diff_id, options=ApplyOptions())
                reader.verify()
        copy_tree(base, directory / "rootfs")
        fresh_ctime(directory / "copied")   # its ctime: the fence of changes()
        return cls(directory, "walk")

    def mount(self) -> None:
        """Make ``path`` the container's root (an overlay mount; nothing for walk)."""
        if self.kind == "overlay" and not mounts_under(self.path):
            # Mounts are "volatile" (run/rootfs.py): overlayfs then refuses the same work
            # dir again (EINVAL) until its incompat/volatile is gone (overlayfs.rst
            # "Volatile mount").  The work dir holds nothing between mounts: renew it.
            remove_tree(self.dir / "work")
            (self.dir / "work").mkdir()
            mount_overlay(list(reversed(self.lowers)), self.dir / "upper", self.dir / "work",
                          self.path)

    def unmount(self) -> None:
        """Unmount everything under the directory (the rootfs, a terminal's devpts)."""
        for point in mounts_under(self.dir):
            unmount(point)

    def changes(self, source_date_epoch: int | None) -> Changeset:
        """What the container changed (the rootfs mounted: see ``mount``)."""
        if self.kind == "overlay":
            return changes_from_upper(self.dir / "upper", list(reversed(self.lowers)),
                                      source_date_epoch, merged=self.path,
                                      # containers/<id> is two levels under the store root
                                      lower_links=SnapshotPool(self.dir.parent.parent).layer_links)
        copied = (self.dir / "copied").stat().st_ctime_ns
        # A clock stepped back since the copy would make new writes look older.
        fence = copied if fresh_ctime(self.dir / "now") >= copied else None
        return diff_trees(self.dir / "base", self.path, source_date_epoch,
                          copied_before_ns=fence)

    def remove(self) -> None:
        self.unmount()
        remove_tree(self.dir)
