"""The local store: blobs, metadata and snapshots under one root directory.

Layout of ``$LAMINA_ROOT`` (default ``$XDG_DATA_HOME/lamina``)::

    blobs/sha256/<hex>     content, named by digest
    ingest/                blobs being written (locked while alive)
    leases/<id>.lock       held (flock) by the process whose lease it is (locks.py)
    snapshots/<hex>/       unpacked layer stacks, by chain id
    meta.db                SQLite metadata (see meta.py)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from lamina.digest import Digest
from lamina.errors import StoreError
from lamina.store import locks
from lamina.store.blobs import BlobStore
from lamina.store.meta import Metadata

_OWNED_LEASE_TTL = 3600.0


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
        self.meta = Metadata(self.root / "meta.db")

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
