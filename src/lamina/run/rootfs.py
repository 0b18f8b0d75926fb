"""A writable root filesystem over an image, and what a process changed in it.

Two ways to make one, with one contract (``Rootfs``) and identical changesets:

``overlay`` (root, overlayfs)
    The image's snapshots (run/snapshots.py: one directory per layer, shared by every
    image with that stack; the bottom of a stack deeper than one mount takes merged
    into one, ``Snapshotter.stack``) are the read-only ``lowerdir``; a fresh
    ``upperdir`` in the store's tmp area takes every write.  Opening costs one mount,
    whatever the image's size, and ``changes()`` walks only the upper dir
    (layer/overlay.py): O(changes).
``walk`` (anyone)
    The layers are applied into ``base``, ``base`` is copied (``cp -a``: owners, modes,
    times, xattrs, hard links, devices as root) to ``work``, and ``changes()`` is
    ``diff_trees(base, work)``: O(tree) for both, but needs no privilege (contents are
    compared only for files written since the copy: their ctime tells).

``auto`` takes overlay when running as root and the store's filesystem can hold an
overlay upper dir (probed once per filesystem), else walk.

Lifecycle: ``open_rootfs`` -> run processes in ``rootfs.path`` -> ``changes()`` ->
write the layer (the changeset reads from the rootfs, so before ``close``) ->
``close()``, which unmounts and removes everything it made.  ``Rootfs`` is a context
manager.  A rootfs dir holds a lock while its process lives; ``open_rootfs`` sweeps the
ones left by a process that died (their mounts, directories and leases).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, Self

from lamina.errors import LaminaError, StoreError
from lamina.layer import ApplyOptions, Changeset, apply_layer, diff_trees
from lamina.layer.overlay import changes_from_upper
from lamina.run.snapshots import SnapshotPool, Snapshotter
from lamina.store import scratch
from lamina.store.rmtree import remove_tree
from lamina.store.store import Lease, Store
from lamina.transport.base import ImageSource
from lamina.transport.resolve import ResolvedImage

SnapshotterMode = Literal["auto", "overlay", "walk"]
SNAPSHOTTER_MODES: tuple[str, ...] = ("auto", "overlay", "walk")

_PREFIX = "rootfs-"
_LOCK = ".lock"
_STALE_AGE = 60.0               # a rootfs dir younger than this may not be locked yet
_MNT_DETACH = 2
# The page the kernel copies mount options into (mount(2)); longer option strings
# are refused, so long lowerdir lists go through short /proc/self/fd names.
_MAX_OPTIONS = 4000


class Rootfs(Protocol):
    """A root filesystem a process can run in, and what it changed there."""

    path: Path

    def changes(self, source_date_epoch: int | None) -> Changeset:
        """What processes changed under ``path``, as a layer changeset (valid until
        ``close``: its contents are read from the rootfs)."""
        ...

    def close(self) -> None:
        """Unmount and remove everything the rootfs made; safe to call twice."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


# -- mounting ---------------------------------------------------------------------------
_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _lib().mount(source.encode(), os.fsencode(target), fstype.encode(),
                      ctypes.c_ulong(flags), os.fsencode(data))
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def unmount(target: str) -> None:
    """Unmount, retrying briefly while busy (a process of the sandbox still exiting),
    then detach lazily: the mount must not outlive the rootfs."""
    lib = _lib()
    for attempt in range(20):
        if lib.umount2(os.fsencode(target), 0) == 0:
            return
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):
            return  # not mounted (any more)
        if e != errno.EBUSY:
            raise OSError(e, os.strerror(e), target)
        time.sleep(0.005 * (attempt + 1))
    if lib.umount2(os.fsencode(target), _MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, os.strerror(e), target)


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (proc(5)).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(top: Path | str) -> list[str]:
    """Mount points at or under ``top`` in this mount namespace, deepest first."""
    prefix = os.path.realpath(top)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                point = _unescape_mountinfo(line.split(" ", 5)[4])
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(point)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def _overlay_options(lowers: Sequence[str], upper: str, work: str,
                     fds: list[int]) -> str:
    """Mount data for ``lowers`` (top first).  Paths that are too long together, or
    hold the separators ',' ':' (overlayfs would split on them), are given as
    ``/proc/self/fd/N`` of an O_PATH descriptor instead (closed by the caller)."""
    # redirect_dir/metacopy off: a renamed directory is copied whole and a chmod copies
    # data up, so the upper dir holds complete entries (layer/overlay.py relies on it).
    # index off: with the inodes index, a copy-up of one name of a lower inode shows in
    # every other name of it (overlayfs.rst "Hardlinks"), and snapshots share inodes
    # across layers through the file pool (run/snapshots.py): a write to one image's
    # file would appear in an identical file of another layer.
    extra = "redirect_dir=off,metacopy=off,index=off"
    paths = [*lowers, upper, work]
    plain = (f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},{extra}")
    if len(plain) <= _MAX_OPTIONS and not any("," in p or ":" in p for p in paths):
        return plain
    short = []
    for p in paths:
        fd = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        fds.append(fd)
        short.append(f"/proc/self/fd/{fd}")
    data = (f"lowerdir={':'.join(short[:-2])},upperdir={short[-2]},workdir={short[-1]},"
            f"{extra}")
    if len(data) > _MAX_OPTIONS:
        raise StoreError(f"{len(lowers)} layers are too many for one overlay mount; "
                         "use the walk snapshotter (--snapshotter walk)")
    return data


# "volatile" (Linux 5.10): the overlay never syncs its upper dir, not even at umount.
# A rootfs is scratch space -- what is kept is written as a layer blob, fsynced on its
# own -- and without it every umount syncs the whole upper filesystem, so closing a
# rootfs would wait for whatever else was written there meanwhile.
_volatile: list[bool] = [True]


def mount_overlay(lowers: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount an overlay of ``lowers`` (top first) with a writable ``upper`` on ``target``."""
    fds: list[int] = []
    try:
        data = _overlay_options([os.fspath(p) for p in lowers], os.fspath(upper),
                                os.fspath(work), fds)
        try:
            mount("overlay", os.fspath(target), "overlay", 0,
                   data + ",volatile" if _volatile[0] else data)
        except OSError as e:
            if e.errno != errno.EINVAL or not _volatile[0]:
                raise
            _volatile[0] = False   # an older kernel: mount without it
            mount("overlay", os.fspath(target), "overlay", 0, data)
    except OSError as e:
        raise StoreError(f"cannot mount an overlay on {target}: {e.strerror or e}") from None
    finally:
        for fd in fds:
            os.close(fd)


_probed: dict[int, str | None] = {}


def overlay_problem(store: Store) -> str | None:
    """Why overlay rootfs cannot be used with this store (None if they can).  Probed
    once per filesystem: a mount with a whiteout and an opaque dir in a lower layer."""
    if os.geteuid() != 0:
        return "overlay mounts need root"
    tmp_root = store.root / "tmp"
    try:
        tmp_root.mkdir(exist_ok=True)
        dev = tmp_root.stat().st_dev
    except OSError as e:
        return f"cannot use {tmp_root}: {e.strerror or e}"
    if dev in _probed:
        return _probed[dev]
    problem: str | None = None
    owned = scratch.make_dir(tmp_root, "probe-")   # a killed probe is gc's to remove
    probe = owned.path
    merged = probe / "merged"
    try:
        for d in ("lower", "upper", "work", "merged"):
            (probe / d).mkdir()
        (probe / "lower" / "shown").write_bytes(b"")
        os.mknod(probe / "lower" / "hidden", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        (probe / "lower" / "opaque").mkdir()
        os.setxattr(probe / "lower" / "opaque", "trusted.overlay.opaque", b"y")
        mount_overlay([probe / "lower"], probe / "upper", probe / "work", merged)
        try:
            names = sorted(os.listdir(merged))
            if names != ["opaque", "shown"]:
                problem = f"overlayfs shows {names} for a probe (whiteouts not honoured)"
            else:
                (merged / "shown").write_bytes(b"x")  # a copy-up
        finally:
            unmount(os.fspath(merged))
    except (OSError, LaminaError) as e:
        problem = f"overlayfs does not work on {tmp_root}: {getattr(e, 'strerror', None) or e}"
    finally:
        owned.remove()
    _probed[dev] = problem
    return problem


# -- the two kinds -------------------------------------------------------------------------
class _Base:
    """A rootfs directory in ``store.root/tmp``, locked while this process uses it."""

    path: Path

    def __init__(self, store: Store, kind: str) -> None:
        self.store = store
        tmp_root = store.root / "tmp"
        try:
            tmp_root.mkdir(exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{kind}-", dir=tmp_root))
            self._lock_fd: int | None = os.open(self.dir / _LOCK,
                                                os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                                                0o600)
        except OSError as e:
            raise StoreError(f"cannot make a root filesystem in {tmp_root}: "
                             f"{e.strerror or e}") from None
        # Blocking: ``lamina df`` or a sweeper may be testing this fresh lock just now
        # (store/scratch.py usage, sweep_stale); they let go at once.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.lease_id: str | None = None
        self._lease: Lease | None = None
        self._closed = False

    def _new_lease(self) -> str:
        # Owned by this process (store/locks.py): however long a container runs, its
        # snapshots stay; once it is killed, gc (dry run alike) sees the lease ended.
        self._lease = self.store.open_lease()
        self.lease_id = self._lease.id
        # The sweeper of a crashed run finds the lease by this file.
        (self.dir / "lease").write_text(self.lease_id)
        return self.lease_id

    def _teardown(self) -> None:
        for point in mounts_under(self.dir):
            unmount(point)
        remove_tree(self.dir)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._lease is not None:
            self._lease.close()
            self._lease = None
            self.lease_id = None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._teardown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OverlayRootfs(_Base):
    """Snapshots as lowerdirs, a fresh upper dir: see the module docstring."""

    def __init__(self, store: Store, source: ImageSource, image: ResolvedImage | None) -> None:
        super().__init__(store, "overlay")
        try:
            self.upper = self.dir / "upper"
            self.work = self.dir / "work"
            self.path = self.dir / "merged"
            for d in (self.upper, self.work, self.path):
                d.mkdir()
            if image is not None and image.manifest.layers:
                lease = self._new_lease()
                owner = image.digest if store.meta.get_image(image.digest) else None
                self.lowers = Snapshotter(store).stack(
                    source, image.manifest.layers, image.config.diff_ids, owner=owner,
                    lease_id=lease)
            else:
                empty = self.dir / "empty"
                empty.mkdir(mode=0o755)
                self.lowers = [empty]
            # The merged root directory is the upper dir's: give it the image's.
            top = self.lowers[-1].stat()
            os.chown(self.upper, top.st_uid, top.st_gid)
            os.chmod(self.upper, top.st_mode & 0o7777)
            mount_overlay(list(reversed(self.lowers)), self.upper, self.work, self.path)
        except BaseException:
            self._teardown()
            raise

    def changes(self, source_date_epoch: int | None) -> Changeset:
        # Snapshot files shared through the pool have more links than their layer gave
        # them; the layer's own count decides "hard-linked in the container".
        return changes_from_upper(self.upper, list(reversed(self.lowers)),
                                  source_date_epoch, merged=self.path,
                                  lower_links=SnapshotPool(self.store.root).layer_links)


class WalkRootfs(_Base):
    """Layers applied into ``base``, copied to ``work``: see the module docstring."""

    def __init__(self, store: Store, source: ImageSource, image: ResolvedImage | None) -> None:
        super().__init__(store, "walk")
        try:
            self.base = self.dir / "base"
            self.path = self.dir / "work"
            self.base.mkdir(mode=0o755)
            os.chmod(self.base, 0o755)  # whatever the umask: it is the root directory
            if image is not None:
                for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids,
                                          strict=True):
                    with source.open_blob(layer) as reader:
                        apply_layer(reader, self.base, expected_diff_id=diff_id,
                                    options=ApplyOptions())
                        reader.verify()
            copy_tree(self.base, self.path)
            # Every file of the copy has a ctime before this one, and every file written
            # after it one at or after it: diff_trees need not read the content of the
            # rest (the base, unpacked from tar headers, has whole-second mtimes, which
            # would otherwise make it compare every file; layer/changes.py).
            self._copied = fresh_ctime(self.dir / "copied")
        except BaseException:
            self._teardown()
            raise

    def changes(self, source_date_epoch: int | None) -> Changeset:
        # A clock stepped back since the copy would make new writes look older: then
        # compare contents as for any tree.
        fence: int | None = self._copied
        if fresh_ctime(self.dir / "now") < self._copied:
            fence = None
        return diff_trees(self.base, self.path, source_date_epoch, copied_before_ns=fence)


def fresh_ctime(path: Path) -> int:
    """The ctime (ns) of a file made now: the file system's clock, as it stamps files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file gets a new ctime too
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)


def copy_tree(src: Path, dst: Path) -> None:
    """``cp -a``: the one copy that keeps owners, modes, times, xattrs, hard links and
    devices together (shutil.copytree keeps neither links nor devices)."""
    cp = shutil.which("cp") or "/bin/cp"
    proc = subprocess.run([cp, "-a", "--", os.fspath(src), os.fspath(dst)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise StoreError(f"cannot copy the root filesystem: {last}")


# -- cleaning up after processes that died ---------------------------------------------
def sweep_stale(store: Store, dry_run: bool = False) -> tuple[int, int]:
    """Remove rootfs dirs (mounts, files, leases) whose process is gone; returns how
    many, and their bytes (``scratch.tree_size``, as ``df`` counts them), so that gc
    reports what it freed here too; ``dry_run`` only counts.

    A live rootfs holds an flock on its ``.lock`` file; one whose lock can be taken
    was left by a process that died (SIGKILL, power loss) before ``close``."""
    tmp_root = store.root / "tmp"
    removed = freed = 0
    try:
        entries = list(os.scandir(tmp_root))
    except OSError:
        return 0, 0
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(os.path.join(entry.path, _LOCK), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime < _STALE_AGE:
                    continue  # being created
            fd = -1
        except OSError:
            continue
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # alive
            size = scratch.tree_size(entry.path)
            if not dry_run:
                for point in mounts_under(entry.path):
                    unmount(point)
                with contextlib.suppress(OSError):
                    lease = Path(entry.path, "lease").read_text().strip()
                    if lease:
                        store.meta.delete_lease(lease)
                        store.lease_lock(lease).unlink(missing_ok=True)
                remove_tree(entry.path)
            removed += 1
            freed += size
        except OSError:
            continue
        finally:
            if fd >= 0:
                os.close(fd)
    return removed, freed


def open_rootfs(store: Store, source: ImageSource, image: ResolvedImage | None,
                mode: SnapshotterMode = "auto") -> OverlayRootfs | WalkRootfs:
    """A writable root filesystem with ``image``'s content (``None``: empty, scratch).

    ``mode``: "overlay" (root; fails with the reason if overlayfs cannot be used),
    "walk" (anyone), or "auto" (overlay when it can, else walk).
    """
    if mode not in SNAPSHOTTER_MODES:
        raise StoreError(f"unknown snapshotter {mode!r}: choose auto, overlay or walk")
    sweep_stale(store)
    if mode != "walk":
        problem = overlay_problem(store)
        if problem is None:
            return OverlayRootfs(store, source, image)
        if mode == "overlay":
            raise StoreError(f"cannot use the overlay snapshotter: {problem}; "
                             "use --snapshotter walk")
    return WalkRootfs(store, source, image)
