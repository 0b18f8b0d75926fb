"""Build cache mounts (``RUN --mount=type=cache``): directories kept outside every layer.

A cache mount is a directory a RUN step sees at its target and that outlives the
build: the next build that mounts the same id finds what the last one left (a pip or
npm download cache).  It belongs to no layer and no image; ``lamina df`` counts it,
``lamina builder prune``, ``gc --cache`` and ``system prune -a`` remove it.

Layout, under ``<store>/cache-mounts/``::

    <h>/               one key: h = sha256 of the key (the id, and the base it was
                       seeded from when the mount has ``from``), shortened
    <h>/.lock          held (flock) while instances are picked, made or removed
    <h>/id             the id, for df
    <h>/<n>/lock       an instance's lock: shared by its shared users, exclusive for a
                       private or locked user, and for prune
    <h>/<n>/data/      what the step sees

Sharing, as BuildKit's (``solver/llbsolver/mounts``, ``getRefCacheDir``): ``shared``
users use the first instance nobody holds exclusively, together; ``private`` takes an
instance nobody uses, or makes a new one; ``locked`` waits for the first instance until
every other user has let go.  flock does the counting, so a killed build holds nothing
(store/locks.py), and a prune that cannot take an instance's lock leaves it alone.

A new instance is made as ``.new-<random>`` (directory, mode/uid/gid as asked, seeded
by the caller), and renamed to its number when ready; prune renames an instance to
``.trash-<random>`` before removing it, and whoever waited for a lock checks afterwards
that the file it locked still has its name (else it starts over).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import StoreError
from lamina.store.locks import flock_or_close
from lamina.store.rmtree import remove_tree

DIRNAME = "cache-mounts"
_KEY_LOCK = ".lock"
_NEW = ".new-"
_TRASH = ".trash-"


@dataclass(frozen=True)
class CacheMountInfo:
    """One instance, as ``df`` lists it."""

    id: str
    instance: int
    path: Path
    size: int        # bytes of its files (each inode once)
    files: int
    in_use: bool


@dataclass(frozen=True)
class NewDir:
    """How a new instance's directory is made (``mode``/``uid``/``gid`` of the mount)."""

    mode: int = 0o755
    uid: int = 0
    gid: int = 0


def _lock(path: Path, how: int, create: bool) -> int | None:
    """A descriptor holding ``how`` on ``path``, or None when it would block (``how``
    with LOCK_NB) or the file went away meanwhile (then look again)."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    if flock_or_close(fd, how) is None:
        return None
    try:
        # Renamed away (pruned) between open and flock: not the lock we wanted.
        same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        same = False
    except BaseException:
        os.close(fd)
        raise
    if not same:
        os.close(fd)
        return None
    return fd


class CacheMounts:
    """The cache mounts of one store (see the module docstring)."""

    def __init__(self, store_root: Path) -> None:
        self.root = Path(store_root) / DIRNAME

    def _key_dir(self, key: str) -> Path:
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:32]

    @contextlib.contextmanager
    def _key_lock(self, kdir: Path) -> Iterator[None]:
        while True:
            kdir.mkdir(parents=True, exist_ok=True)
            fd = _lock(kdir / _KEY_LOCK, fcntl.LOCK_EX, create=True)
            if fd is not None:
                break
        try:
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _instances(kdir: Path) -> list[int]:
        try:
            return sorted(int(e.name) for e in os.scandir(kdir) if e.name.isdecimal())
        except FileNotFoundError:
            return []

    def _make(self, kdir: Path, new: NewDir, seed: Callable[[Path], None] | None,
              how: int) -> tuple[int, Path]:
        """A new instance, locked ``how`` (the caller holds the key lock)."""
        tmp = kdir / f"{_NEW}{os.urandom(6).hex()}"
        tmp.mkdir()
        fd = _lock(tmp / "lock", how | fcntl.LOCK_NB, create=True)
        assert fd is not None   # a fresh file nobody else knows
        try:
            data = tmp / "data"
            data.mkdir()
            os.chmod(data, new.mode & 0o7777)
            with contextlib.suppress(PermissionError):   # rootless: only our own ids
                os.chown(data, new.uid, new.gid)
            if seed is not None:
                seed(data)
            numbers = self._instances(kdir)
            number = (numbers[-1] + 1) if numbers else 0
            os.rename(tmp, kdir / str(number))
        except BaseException:
            os.close(fd)
            remove_tree(tmp)
            raise
        return fd, kdir / str(number) / "data"

    @contextlib.contextmanager
    def acquire(self, key: str, label: str, sharing: str, new: NewDir = NewDir(),
                seed: Callable[[Path], None] | None = None,
                on_wait: Callable[[], None] | None = None) -> Iterator[Path]:
        """The data directory of an instance of ``key``, held until the block ends.
        ``label`` is the id users know it by; ``seed`` fills a new instance (a mount
        ``from`` a stage); ``on_wait`` is called before waiting for a locked one."""
        if sharing not in ("shared", "private", "locked"):
            raise ValueError(f"unknown sharing {sharing!r}")
        kdir = self._key_dir(key)
        try:
            fd, data = self._pick(kdir, label, sharing, new, seed, on_wait)
        except OSError as e:
            raise StoreError(f"cannot use the cache mount {label}: {e.strerror or e}"
                             ) from None
        try:
            yield data
        finally:
            os.close(fd)

    def _pick(self, kdir: Path, label: str, sharing: str, new: NewDir,
              seed: Callable[[Path], None] | None,
              on_wait: Callable[[], None] | None) -> tuple[int, Path]:
        how = fcntl.LOCK_SH if sharing == "shared" else fcntl.LOCK_EX
        while True:
            with self._key_lock(kdir):
                idfile = kdir / "id"
                if not idfile.exists():
                    idfile.write_text(label, encoding="utf-8")
                numbers = self._instances(kdir)
                candidates = numbers[:1] if sharing == "locked" else numbers
                for n in candidates:
                    fd = _lock(kdir / str(n) / "lock", how | fcntl.LOCK_NB, create=False)
                    if fd is not None:
                        return fd, kdir / str(n) / "data"
                if sharing != "locked" or not numbers:
                    return self._make(kdir, new, seed, how)
            # locked, and held by another build: wait for it outside the key lock.
            if on_wait is not None:
                on_wait()
            fd = _lock(kdir / str(numbers[0]) / "lock", fcntl.LOCK_EX, create=False)
            if fd is not None:
                return fd, kdir / str(numbers[0]) / "data"
            # pruned while we waited: start over

    # -- df and prune -------------------------------------------------------------------
    def _entries(self) -> Iterator[tuple[Path, str]]:
        try:
            dirs = sorted(e.path for e in os.scandir(self.root) if e.is_dir())
        except FileNotFoundError:
            return
        for d in dirs:
            try:
                label = Path(d, "id").read_text(encoding="utf-8")
            except OSError:
                label = "?"
            yield Path(d), label

    def instances(self) -> list[CacheMountInfo]:
        """Every instance, with its size and whether a build holds it now."""
        out: list[CacheMountInfo] = []
        for kdir, label in self._entries():
            for n in self._instances(kdir):
                fd = _lock(kdir / str(n) / "lock", fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)
                in_use = fd is None
                if fd is not None:
                    os.close(fd)
                size, files = _du(kdir / str(n) / "data")
                out.append(CacheMountInfo(label, n, kdir / str(n) / "data", size, files,
                                          in_use))
        out.sort(key=lambda i: (i.id, i.instance))
        return out

    def prune(self, dry_run: bool = False) -> tuple[list[CacheMountInfo], int]:
        """Remove every instance no build holds (and what crashed ones left); returns
        the instances removed and the bytes freed."""
        removed: list[CacheMountInfo] = []
        freed = 0
        for kdir, label in list(self._entries()):
            with self._key_lock(kdir):
                for entry in list(os.scandir(kdir)):
                    name = entry.name
                    if not (name.isdecimal() or name.startswith((_NEW, _TRASH))):
                        continue
                    fd = _lock(Path(entry.path, "lock"), fcntl.LOCK_EX | fcntl.LOCK_NB,
                               create=False)
                    held = fd is None and Path(entry.path, "lock").exists()
                    if held and not name.startswith(_TRASH):
                        continue   # held by a build
                    try:
                        size, files = _du(Path(entry.path, "data"))
                        if name.isdecimal():
                            removed.append(CacheMountInfo(label, int(name),
                                                          Path(entry.path, "data"), size,
                                                          files, False))
                        freed += size
                        if not dry_run:
                            trash = kdir / f"{_TRASH}{os.urandom(6).hex()}"
                            os.rename(entry.path, trash)
                            remove_tree(trash)
                    finally:
                        if fd is not None:
                            os.close(fd)
                if not dry_run and not self._instances(kdir):
                    # Empty: the key goes too (a waiter re-checks its lock's name).
                    for name in ("id", _KEY_LOCK):
                        with contextlib.suppress(OSError):
                            (kdir / name).unlink()
            if not dry_run:
                with contextlib.suppress(OSError):
                    kdir.rmdir()
        return removed, freed


def _du(top: Path) -> tuple[int, int]:
    """Bytes and count of the regular files under ``top`` (hard links once)."""
    seen: set[tuple[int, int]] = set()
    size = files = 0
    stack = [os.fspath(top)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(e.path)
            elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
                files += 1
    return size, files
