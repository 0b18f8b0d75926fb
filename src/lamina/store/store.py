"""The local store: blobs, metadata and snapshots under one root directory.

Layout of ``$LAMINA_ROOT`` (default ``$XDG_DATA_HOME/lamina``)::

    blobs/sha256/<hex>     content, named by digest
    packs/<name>.pack|.idx chunks of blobs kept as chunks, each once, and where they
                           lie (packs.py; chunks/sha256/<hex>: one file each, older
                           stores)
    chunks/lock            writers shared, gc's chunk sweep exclusive (chunks.py)
    recipes/sha256/<hex>   such a blob: its chunks in order
    ingest/                blobs and packs being written (locked while alive)
    leases/<id>.lock       held (flock) by the process whose lease it is (locks.py)
    snapshots/<hex>/       unpacked layer stacks, by chain id
    pool/<2 hex>/<hex>     one inode per identical snapshot file (pool.py)
    containers/<id>/       a container's rootfs, log and monitor lock (run/containers.py)
    cache-mounts/          RUN --mount=type=cache directories (cachemounts.py)
    meta.db                SQLite metadata (see meta.py)
    reserve                space held back for a full disk (Store._open_meta)
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from lamina.digest import Digest
from lamina.errors import NoSpace, StoreError
from lamina.store import locks
from lamina.store.blobs import BlobStore
from lamina.store.meta import Metadata, no_space_left

_OWNED_LEASE_TTL = 3600.0
RESERVE = "reserve"
# Room for -shm (32 KiB) and the WAL pages of an rmi or gc that frees space.
RESERVE_SIZE = 256 * 1024


def _allocate(fd: int, size: int) -> None:
    """Give ``fd`` ``size`` bytes of real blocks (a sparse file would hold nothing back)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    zeros = bytes(65536)
    done = 0
    while done < size:
        done += os.write(fd, zeros[:size - done])


def default_root() -> Path:
    env = os.environ.get("LAMINA_ROOT")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                              "share")
    return Path(data) / "lamina"


class Lease:
    """Resources registered here survive gc until the lease ends: at ``close``, or when
    the process holding its lock file dies (a killed pull pins nothing; gc.py)."""

    def __init__(self, meta: Metadata, lease_id: str, lock: Path, fd: int) -> None:
        self._meta = meta
        self.id = lease_id
        self._lock = lock
        self._fd: int | None = fd

    def add(self, key: str | Digest) -> None:
        self._meta.add_lease_resource(self.id, str(key))

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self._meta.delete_lease(self.id)
        finally:
            # Even when the row cannot be deleted (store busy), the free lock tells the
            # next gc that the lease is over.
            locks.release(self._lock, fd)


class Store:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "snapshots").mkdir(exist_ok=True)
            self.lease_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store at {self.root}: {e.strerror or e}") from None
        self.blobs = BlobStore(self.root)
        self.meta = self._open_meta()
        self._keep_reserve()

    def _open_meta(self) -> Metadata:
        """Open the metadata, even on a full file system.

        In WAL mode every connection, a reader's too, needs ``meta.db-wal`` and ``-shm``,
        and a transaction needs room for its pages in the WAL: on a full disk every
        command failed, ``rmi``, ``gc`` and ``df`` included (issue 10.9).  So the store
        keeps ``reserve``, a file of RESERVE_SIZE bytes, as ballast: when the metadata
        cannot be opened for want of space, the reserve is given up and the open tried
        again; ``rmi``/``gc`` then free space, and the next open takes the reserve back.
        It is given up at once when the disk is all but full, since an open that works
        (``-wal`` left by another process) is no sign that a transaction will.  Without
        a reserve to give, the error says how to free space."""
        path = self.root / "meta.db"
        if no_space_left(self.root):
            self._give_up_reserve()
        try:
            return Metadata(path)
        except NoSpace:
            if not self._give_up_reserve():
                raise
            return Metadata(path)

    def _give_up_reserve(self) -> bool:
        try:
            os.unlink(self.root / RESERVE)
        except FileNotFoundError:
            return False
        return True

    def _keep_reserve(self) -> None:
        """Make ``reserve`` if it is missing and there is room (else try next time); room
        enough that the disk is not then "all but full", or the next open would give it
        up again."""
        final = self.root / RESERVE
        if final.exists() or no_space_left(self.root, RESERVE_SIZE):
            return
        tmp = self.root / f"{RESERVE}.{os.getpid()}-{os.urandom(4).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _allocate(fd, RESERVE_SIZE)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    @property
    def lease_dir(self) -> Path:
        return self.root / "leases"

    def lease_lock(self, lease_id: str) -> Path:
        return self.lease_dir / f"{lease_id}.lock"

    def snapshot_path(self, chain_id: Digest) -> Path:
        return self.root / "snapshots" / chain_id.encoded

    def open_lease(self) -> Lease:
        """A lease owned by this process: its lock file is locked *before* its row
        exists, so gc never sees the row of a live lease without a held lock."""
        lease_id = os.urandom(8).hex()
        lock = self.lease_lock(lease_id)
        try:
            fd = locks.hold(lock)
        except OSError as e:
            raise StoreError(f"cannot create a lease in {self.lease_dir}: "
                             f"{e.strerror or e}") from None
        try:
            # The row's expiry is only a fallback, for a lock file removed by hand.
            self.meta.create_lease(_OWNED_LEASE_TTL, lease_id)
        except BaseException:
            locks.release(lock, fd)
            raise
        return Lease(self.meta, lease_id, lock, fd)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        """Protect what an operation writes until it has tagged or recorded it."""
        lease = self.open_lease()
        try:
            yield lease
        finally:
            lease.close()

    def close(self) -> None:
        self.meta.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
