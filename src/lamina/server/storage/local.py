"""Blob storage in the store's own ``blobs/`` (the default driver).

An upload is a ``BlobWriter`` in the store's ingest area: bytes are hashed as they are
written, and ``commit`` checks the digest and commits it (fsync, rename) — the store's
own commit protocol, so a crash never leaves a half blob under a real name and a blob
pushed twice is stored once.  The session row keeps the ingest file's path; a session
the process lost (a restart between two PATCHes) is resumed by re-hashing that file
into a fresh writer, unless a live writer (another server on this store) holds its
``flock``.  The hash runs as sha256; a blob finished under another algorithm (sha512)
is re-hashed once at commit.

With replicas (one store directory, a shared metadata database) every request ends with
the writer flushed, so that whichever replica takes the next request can re-hash the
file; it re-hashes only the ``offset`` bytes the row vouches for (a replica killed
mid-request may have written more than it recorded), and removes the old file once its
claim on the row has won.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import sys
from collections.abc import Callable, Iterator

from lamina.digest import CHUNK, Digest
from lamina.errors import IntegrityError, NotFound
from lamina.server.storage import BlobBody, RangeNotSatisfiable, SessionHeld
from lamina.store.blobs import BlobWriter
from lamina.store.chunks import ChunkedFile
from lamina.store.store import Store

# Every this many bytes, the kernel is asked to start writing the upload back to disk
# (sync_file_range(SYNC_FILE_RANGE_WRITE): start, do not wait, keep the page cache), so
# the fsync of the closing commit finds little left to flush — the durable commit then
# costs about what docker-registry's non-durable one does.
WRITEBACK_SIZE = 8 * CHUNK


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> None:
        fn(fd, offset, length, 2)       # SYNC_FILE_RANGE_WRITE

    return start_writeback


_start_writeback = _load_sync_file_range() if sys.platform == "linux" else None


class LocalIngest:
    def __init__(self, store: Store, writer: BlobWriter, replicas: bool = False,
                 previous: str | None = None) -> None:
        self.store = store
        self.writer = writer
        self.replicas = replicas
        self.previous = previous    # the ingest file this one was resumed from
        self.flushed = 0        # bytes already handed to the kernel's writeback

    @property
    def offset(self) -> int:
        return self.writer.count

    def state(self) -> str:
        return str(self.writer.path)

    def write(self, data: bytes) -> None:
        """Hash and write, starting writeback as it goes."""
        self.writer.write(data)
        if _start_writeback is not None and self.offset - self.flushed >= WRITEBACK_SIZE:
            self.writer.flush()
            fd = os.open(self.writer.path, os.O_RDONLY)
            try:
                _start_writeback(fd, self.flushed, self.offset - self.flushed)
            finally:
                os.close(fd)
            self.flushed = self.offset

    def checkpoint(self) -> None:
        """The ingest file is the state; replicas read it, not our buffer."""
        if self.replicas:
            self.writer.flush()

    def commit(self, digest: Digest, protect: Callable[[], None]) -> None:
        writer = self.writer
        size = writer.count
        if digest.algorithm != "sha256":
            writer.flush()
            other = self.store.blobs.writer(digest.algorithm)
            try:
                with open(writer.path, "rb") as src:
                    other.copy_from(src)
            except BaseException:
                other.abort()
                raise
            writer.abort()
            writer = self.writer = other
        elif writer.digest != digest:
            raise IntegrityError(f"content has digest {writer.digest}")
        protect()           # before the rename: gc cannot take it
        writer.commit(digest, size)

    def abort(self) -> None:
        self.writer.abort()     # no-op after a commit

    def forget(self) -> None:
        self.writer.abort()     # our own ingest file; the row names another

    def claimed(self) -> None:
        if self.previous is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.previous)
            self.previous = None


class LocalStorage:
    name = "local"

    def __init__(self, store: Store, replicas: bool = False) -> None:
        self.store = store
        self.shared = replicas

    def has(self, digest: Digest) -> bool:
        return self.store.blobs.has(digest)

    def size(self, digest: Digest) -> int | None:
        try:
            return self.store.blobs.size(digest)
        except (OSError, NotFound):
            return None

    def read_bytes(self, digest: Digest, limit: int) -> bytes | None:
        size = self.size(digest)
        if size is None or size > limit:
            return None
        return self.store.blobs.read_bytes(digest, size)

    def put_bytes(self, digest: Digest, data: bytes) -> None:
        self.store.blobs.put_bytes(data, digest)

    def open(self, digest: Digest, byte_range: str | None) -> BlobBody | None:
        from lamina.server.http import byte_range as parse_range

        path = str(self.store.blobs.path(digest))
        source: str | ChunkedFile = path
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            # Kept as chunks: served through its recipe, Range reads included (the file
            # opens no chunk before the body is sent).
            chunked = self.store.blobs.chunked(digest)
            if chunked is None:
                return None
            source, size = chunked, chunked.size
        rng = parse_range(byte_range, size)
        if rng is False:
            if not isinstance(source, str):
                source.close()
            raise RangeNotSatisfiable(size)
        if rng is None or rng is True:
            return BlobBody(source, size, 0, size, False)
        return BlobBody(source, size, rng[0], rng[1], True)

    def redirect_url(self, digest: Digest) -> str | None:
        return None

    def ingest(self, uuid: str) -> LocalIngest:
        return LocalIngest(self.store, self.store.blobs.writer(), self.shared)

    def resume(self, uuid: str, state: str, offset: int) -> LocalIngest | None:
        """Re-hash the ingest file into a fresh writer (None: gone, held or torn).
        Shared (replicas): the writer that holds the file may be alive on another
        replica, and a replica killed mid-request may have written past what its row
        vouches for: take the first ``offset`` bytes, whoever holds the lock."""
        try:
            fd = os.open(state, os.O_RDONLY)
        except OSError:
            return None
        try:
            if not self.shared:
                try:   # a live writer (another server on this store) holds it: not ours
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise SessionHeld(uuid) from None
                if os.fstat(fd).st_size != offset:
                    os.unlink(state)
                    return None
            elif os.fstat(fd).st_size < offset:
                return None         # not flushed by a writer that died: lost
            writer = self.store.blobs.writer()
            try:
                with os.fdopen(os.dup(fd), "rb") as src:
                    left = offset       # only what the row vouches for
                    while left and (chunk := src.read(min(CHUNK, left))):
                        writer.write(chunk)
                        left -= len(chunk)
                if self.shared:
                    writer.flush()      # the next replica reads the file, not our buffer
            except BaseException:
                writer.abort()
                raise
        finally:
            os.close(fd)
        return LocalIngest(self.store, writer, self.shared, previous=state)

    def drop(self, state: str) -> bool:
        try:
            fd = os.open(state, os.O_RDONLY)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(state)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True

    def digests(self) -> Iterator[Digest]:
        return self.store.blobs.list()

    def delete(self, digest: Digest) -> bool:
        return self.store.blobs.delete(digest)

    def close(self) -> None:
        """The store is closed by its owner."""
