"""The local store: blobs, metadata and snapshots under one root directory.

Layout of ``$LAMINA_ROOT`` (default ``$XDG_DATA_HOME/lamina``)::

    blobs/sha256/<hex>     content, named by digest
    ingest/                blobs being written (locked while alive)
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
from lamina.store.blobs import BlobStore
from lamina.store.meta import Metadata


def default_root() -> Path:
    env = os.environ.get("LAMINA_ROOT")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                              "share")
    return Path(data) / "lamina"


class Lease:
    """Resources registered here survive gc until the lease ends."""

    def __init__(self, meta: Metadata, lease_id: str) -> None:
        self._meta = meta
        self.id = lease_id

    def add(self, key: str | Digest) -> None:
        self._meta.add_lease_resource(self.id, str(key))


class Store:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "snapshots").mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store at {self.root}: {e.strerror or e}") from None
        self.blobs = BlobStore(self.root)
        self.meta = Metadata(self.root / "meta.db")

    def snapshot_path(self, chain_id: Digest) -> Path:
        return self.root / "snapshots" / chain_id.encoded

    @contextlib.contextmanager
    def lease(self, ttl: float = 3600.0) -> Iterator[Lease]:
        """Protect what an operation writes until it has tagged or recorded it."""
        lease_id = self.meta.create_lease(ttl)
        try:
            yield Lease(self.meta, lease_id)
        finally:
            self.meta.delete_lease(lease_id)

    def close(self) -> None:
        self.meta.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
