"""Scratch space in ``<store>/tmp``, owned by the live process that made it.

Every temporary directory or file lamina makes in the store (a build's work area, a
snapshot being extracted, a tar unpacked for import, an export's root, the overlayfs
probe, a decompressed archive) is ``tmp/<prefix><random>`` with a lock file
``tmp/<prefix><random>.lock`` beside it, held (locks.py) while its process lives.  The
lock is taken *before* the entry is made, so an entry of a live process is never without
a held lock; a process killed by SIGKILL leaves its entry with a free lock, and
``sweep`` (run by gc) removes it and counts its bytes; ``usage`` is what ``df`` shows.
The lock sits beside the entry, not in it, because a snapshot directory is renamed whole
into ``snapshots/``.

Rootfs dirs (``rootfs-*``, run/rootfs.py) keep their own lock inside and are swept by
``run.rootfs.sweep_stale``, which also unmounts them and ends their leases; ``sweep``
leaves them alone, ``usage`` counts them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from lamina.errors import StoreError
from lamina.store import locks
from lamina.store.rmtree import remove_tree

_LOCK = ".lock"
ROOTFS_PREFIX = "rootfs-"   # run/rootfs.py: a lock inside, swept there


class Scratch:
    """One scratch entry (``path``), owned while this object lives; ``remove`` ends it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def remove(self) -> None:
        """Remove the entry (whatever is in it), then let go of its lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # What cannot be removed now (a busy mount) is gc's once the lock is free.
            with contextlib.suppress(OSError):
                remove_tree(self.path)
        finally:
            locks.release(_lock_of(self.path), fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _lock_of(path: Path | str) -> Path:
    return Path(f"{os.fspath(path)}{_LOCK}")


def _make(tmp_root: Path, prefix: str, directory: bool) -> Scratch:
    try:
        tmp_root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = tmp_root / f"{prefix}{os.urandom(6).hex()}"
            try:
                fd = locks.hold(_lock_of(path))
            except FileExistsError:
                continue
            try:
                if directory:
                    os.mkdir(path, 0o700)
                else:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except BaseException:
                locks.release(_lock_of(path), fd)
                raise
            return Scratch(path, fd)
    except OSError as e:
        raise StoreError(f"cannot make a temporary {'directory' if directory else 'file'} "
                         f"in {tmp_root}: {e.strerror or e}") from None
    raise StoreError(f"cannot make a temporary name in {tmp_root}")


def make_dir(tmp_root: Path, prefix: str) -> Scratch:
    """A fresh directory ``tmp_root/<prefix><random>`` (mode 0700, as mkdtemp)."""
    return _make(tmp_root, prefix, directory=True)


def make_file(tmp_root: Path, prefix: str) -> Scratch:
    """A fresh empty file ``tmp_root/<prefix><random>`` (mode 0600, as mkstemp)."""
    return _make(tmp_root, prefix, directory=False)


def tree_size(path: Path | str) -> int:
    """Bytes of the files under ``path`` (or of ``path``, a file), not crossing into
    other file systems: a live rootfs holds an overlay mount of the store's snapshots,
    which are counted where they live."""
    try:
        top = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(top.st_mode):
        return top.st_size
    total = 0
    stack = [os.fspath(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev == top.st_dev:
                    stack.append(entry.path)
            else:
                total += st.st_size
    return total


@dataclass
class TempUsage:
    """What ``tmp/`` holds: every entry, and those of dead processes (``reclaimable``)."""
    count: int = 0
    size: int = 0
    reclaimable_count: int = 0
    reclaimable_size: int = 0


def _abandoned(tmp_root: Path, name: str) -> int | None:
    """The lock of entry ``name`` if its process is gone (None while it lives).  An
    entry without any lock file is a leftover of a lamina from before locks; it is
    taken for abandoned once it is older than a process needs between the two steps."""
    lock = tmp_root / name / _LOCK if name.startswith(ROOTFS_PREFIX) else \
        _lock_of(tmp_root / name)
    try:
        return locks.take_if_abandoned(lock)
    except FileNotFoundError:
        pass
    # No lock: ``take_if_abandoned`` on the entry itself checks its age, and a lock on a
    # directory's own descriptor is as good as any to hold while removing it.
    return locks.take_if_abandoned(tmp_root / name, min_age=locks.STALE_AGE)


def _entries(tmp_root: Path) -> list[str]:
    try:
        return sorted(e for e in os.listdir(tmp_root) if not e.endswith(_LOCK))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StoreError(f"cannot read {tmp_root}: {e.strerror or e}") from None


def usage(tmp_root: Path) -> TempUsage:
    """Count every entry of ``tmp_root`` and its bytes; reclaimable: those of dead
    processes (what gc removes, with rootfs dirs that run.rootfs.sweep_stale removes)."""
    out = TempUsage()
    for name in _entries(tmp_root):
        size = tree_size(tmp_root / name)
        out.count += 1
        out.size += size
        try:
            fd = _abandoned(tmp_root, name)
        except OSError:
            continue
        if fd is not None:
            os.close(fd)
            out.reclaimable_count += 1
            out.reclaimable_size += size
    return out


def sweep(tmp_root: Path, dry_run: bool = False) -> tuple[int, int]:
    """Remove the entries of dead processes (not rootfs dirs: see the module docstring)
    and lock files left without an entry.  Returns how many entries, and their bytes."""
    removed = freed = 0
    for name in _entries(tmp_root):
        if name.startswith(ROOTFS_PREFIX):
            continue
        try:
            fd = _abandoned(tmp_root, name)
        except OSError:
            continue
        if fd is None:
            continue
        try:
            freed += tree_size(tmp_root / name)
            removed += 1
            if not dry_run:
                remove_tree(tmp_root / name)
                _lock_of(tmp_root / name).unlink(missing_ok=True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise StoreError(f"cannot remove {tmp_root / name}: "
                                 f"{e.strerror or e}") from None
        finally:
            os.close(fd)
    if not dry_run:
        _sweep_orphan_locks(tmp_root)
    return removed, freed


def _sweep_orphan_locks(tmp_root: Path) -> None:
    """A process killed between removing its entry and unlinking its lock leaves the
    lock alone; one between taking the lock and making the entry, too (still held)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(tmp_root):
            entry = tmp_root / name.removesuffix(_LOCK)
            if name == entry.name or os.path.lexists(entry):
                continue
            with contextlib.suppress(OSError):
                fd = locks.take_if_abandoned(tmp_root / name, min_age=locks.STALE_AGE)
                if fd is not None:
                    locks.release(tmp_root / name, fd)
