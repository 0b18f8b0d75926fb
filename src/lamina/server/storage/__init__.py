"""Where ``lamina serve`` keeps blob bytes: the interface and its two drivers.

    local   the store's own ``blobs/`` (default): what ``lamina serve`` always did
    s3      objects in an S3 bucket, named by digest (storage/s3.py)

Manifests stay in the store with the rest of the metadata; what goes through the blob
API (layers, configs, any blob) is the driver's.  A driver answers, for the handlers in
server/blobs.py, server/uploads.py and server/manifests.py:

- ``has``/``size``/``read_bytes``: is a blob there, how big, its bytes (small blobs:
  the configs a pushed manifest names);
- ``open``: a blob GET, whole or one byte range, as something ``send_reply`` streams;
- ``redirect_url``: where to send a blob GET instead (None: serve it ourselves);
- ``ingest``/``resume``/``drop``: an upload's bytes on their way in (``Ingest``), and
  picking one up again from the opaque ``state`` string its session row keeps;
- ``digests``/``delete``: what garbage collection needs.

Every call blocks (handlers run them in worker threads).  A driver whose backend cannot
be reached raises ``StorageUnavailable``: the request gets 503 and one log line, and the
next request tries again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lamina.digest import Digest
from lamina.errors import StoreError, Unsupported

if TYPE_CHECKING:
    from lamina.server.config import StorageConfig
    from lamina.server.http import RangeFile
    from lamina.store.store import Store


class StorageUnavailable(StoreError):
    """The blob storage cannot be reached now (503 Service Unavailable)."""


class SessionHeld(Exception):
    """An upload's bytes are being written by a live process: not ours to resume."""


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable (size {size})")
        self.size = size


@dataclass
class BlobBody:
    """A GET's answer: ``length`` bytes from ``start`` of a ``size``-byte blob, read
    from ``source`` (a file path, or a ``RangeFile``) at those offsets."""

    source: str | RangeFile
    size: int
    start: int
    length: int
    partial: bool


class Ingest(Protocol):
    """One upload's bytes on their way in, hashed as they arrive."""

    @property
    def offset(self) -> int: ...

    def state(self) -> str:
        """What another process needs to continue (kept in the session's row)."""
        ...

    def write(self, data: bytes) -> None: ...

    def checkpoint(self) -> None:
        """End of a request: make what arrived durable and resumable elsewhere."""
        ...

    def commit(self, digest: Digest, protect: Callable[[], None]) -> None:
        """Check the bytes against ``digest`` (IntegrityError if they differ), call
        ``protect`` (the gc lease), then make the blob visible under its digest."""
        ...

    def abort(self) -> None:
        """End the upload: remove every byte of it (a cancel, a mismatch)."""
        ...

    def forget(self) -> None:
        """Let go of this process's copy only (another replica has the session now)."""
        ...

    def claimed(self) -> None:
        """The session row now names this ingest: drop what its previous state held
        that this one does not share."""
        ...


class BlobStorage(Protocol):
    name: str
    shared: bool        # other processes may continue this one's uploads (replicas)

    def has(self, digest: Digest) -> bool: ...
    def size(self, digest: Digest) -> int | None: ...
    def read_bytes(self, digest: Digest, limit: int) -> bytes | None: ...

    def put_bytes(self, digest: Digest, data: bytes) -> None:
        """Store ``data``, already verified against ``digest`` (a manifest)."""
        ...

    def open(self, digest: Digest, byte_range: str | None) -> BlobBody | None:
        """The blob (one RFC 9110 byte range of it when ``byte_range`` names one), None
        when missing; RangeNotSatisfiable for a range past its end."""
        ...

    def redirect_url(self, digest: Digest) -> str | None: ...
    def ingest(self, uuid: str) -> Ingest: ...
    def resume(self, uuid: str, state: str, offset: int) -> Ingest | None:
        """Pick up a session from its row (None: its bytes are gone or torn; the row
        goes too); SessionHeld while a live process writes it."""
        ...

    def drop(self, state: str) -> bool:
        """Remove an abandoned session's bytes; False when a live writer holds them."""
        ...

    def digests(self) -> Iterator[Digest]: ...
    def delete(self, digest: Digest) -> bool: ...
    def close(self) -> None: ...


def open_storage(cfg: StorageConfig, store: Store, shared: bool = False) -> BlobStorage:
    """The driver ``cfg`` names; ``shared``: replicas share the metadata
    (server/meta_pg.py), so a local blob directory is shared too (a network file system,
    or one machine's processes)."""
    if cfg.driver == "s3":
        from lamina.server.storage.s3 import S3Storage  # boto3 only where S3 is used

        try:
            return S3Storage(cfg)
        except ImportError as e:   # an optional dependency: pip install 'lamina[s3]'
            raise Unsupported(f"[storage] driver = \"s3\" needs {e.name or 'boto3'}: "
                              "pip install 'lamina[s3]'") from None
    from lamina.server.storage.local import LocalStorage

    return LocalStorage(store, shared)
