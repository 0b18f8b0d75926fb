"""Blob upload sessions (distribution-spec 1.1 "Pushing blobs").

A session is a ``BlobWriter`` in the store's ingest area: bytes are hashed as they are
written, and ``finish`` checks the digest, registers the blob in the server's lease and
commits it (fsync, rename) — the store's own commit protocol, so a crash never leaves a
half blob under a real name and a blob pushed twice is stored once.

Sessions live in memory (a running hash cannot be persisted: ``hashlib`` objects do not
pickle) and in ``server_uploads`` (repository, ingest path, offset).  A session the
process lost — the server restarted between two PATCHes — is resumed from its row by
re-hashing the ingest file into a fresh writer, if the file is still there and as long
as the row says.  The hash runs as sha256; a blob finished under another algorithm
(sha512) is re-hashed once at ``finish``.

Each session has an ``asyncio.Lock``: requests on one session run one at a time, so a
second PATCH racing the first sees the new offset and gets its 416.

Replicas (a shared metadata database, ``Db.shared``): any replica may continue a session.
The row carries a generation, bumped by every request that moves the session; a replica
continues from the writer (and running hash) it holds only while the row is still at the
generation it last wrote, and otherwise resumes from the row — re-hashing the first
``offset`` bytes of the ingest file the row names into a writer of its own, and claiming
the session with a conditional update (``move_upload``).  A replica that loses that
race, or finds the session moved while it wrote, drops its writer and answers
BLOB_UPLOAD_UNKNOWN; the row, which says where the session stands, is never lost.  So
switching replicas costs one re-hash of what was sent so far; staying costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import fcntl
import os
import secrets
import sys
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio.to_thread

from lamina.digest import CHUNK, Digest
from lamina.errors import IntegrityError
from lamina.server.errors import RegistryHTTPError, digest_invalid, upload_unknown
from lamina.server.metadata import Lease
from lamina.server.state import RegistryState, UploadRow
from lamina.store.blobs import BlobWriter
from lamina.store.store import Store

# Body bytes are gathered into writes of this size, each hashed and written in a worker
# thread (hashlib and file writes release the GIL: two uploads use two cores).
WRITE_SIZE = CHUNK
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


def new_uuid() -> str:
    return str(uuidlib.UUID(bytes=secrets.token_bytes(16), version=4))


def valid_uuid(text: str) -> bool:
    try:
        return str(uuidlib.UUID(text)) == text
    except ValueError:
        return False


@dataclass
class Upload:
    uuid: str
    repo: str
    writer: BlobWriter
    started: float
    expires: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: bool = False
    flushed: int = 0        # bytes already handed to the kernel's writeback
    gen: int = 0            # the row's generation this process last wrote

    @property
    def offset(self) -> int:
        return self.writer.count

    def write(self, data: bytes) -> None:
        """Hash and write (blocking: in a worker thread), starting writeback as it goes."""
        self.writer.write(data)
        if _start_writeback is not None and self.offset - self.flushed >= WRITEBACK_SIZE:
            self.writer.flush()
            fd = os.open(self.writer.path, os.O_RDONLY)
            try:
                _start_writeback(fd, self.flushed, self.offset - self.flushed)
            finally:
                os.close(fd)
            self.flushed = self.offset


class Uploads:
    def __init__(self, store: Store, state: RegistryState, lease: Lease,
                 ttl: float, max_blob: int) -> None:
        self.store = store
        self.state = state
        self.lease = lease
        self.ttl = ttl
        self.max_blob = max_blob
        self._live: dict[str, Upload] = {}

    def __len__(self) -> int:
        return len(self._live)

    def _row(self, up: Upload) -> UploadRow:
        return UploadRow(up.uuid, up.repo, str(up.writer.path), up.offset, up.started,
                         up.expires, up.gen)

    @property
    def shared(self) -> bool:
        return self.state.db.shared

    def _save(self, up: Upload) -> None:
        """Record where ``up`` stands (blocking).  With replicas: flush the bytes for the
        next replica to read, and move the row on only if nobody else has."""
        if not self.shared:
            self.state.put_upload(self._row(up))
            return
        up.writer.flush()
        row = self._row(up)
        if not self.state.move_upload(dataclasses.replace(row, gen=up.gen + 1), up.gen):
            raise _moved(up.uuid)
        up.gen += 1

    async def start(self, repo: str) -> Upload:
        def create() -> Upload:
            now = time.time()
            up = Upload(new_uuid(), repo, self.store.blobs.writer(), now, now + self.ttl)
            try:
                self.state.put_upload(self._row(up))
            except BaseException:
                up.writer.abort()
                raise
            return up

        up = await anyio.to_thread.run_sync(create)
        self._live[up.uuid] = up
        return up

    async def get(self, uuid: str, repo: str) -> Upload:
        """The live session ``uuid`` of ``repo`` (resumed from its row if need be)."""
        if not valid_uuid(uuid):
            raise upload_unknown(uuid[:64])
        up = self._live.get(uuid)
        if up is not None and self.shared and not up.lock.locked():
            row = await anyio.to_thread.run_sync(self.state.upload, uuid)
            if row is None or row.gen != up.gen or row.path != str(up.writer.path):
                # Another replica moved (or ended) it: what this one holds is stale.
                self._live.pop(uuid, None)
                up.done = True
                up.writer.abort()
                up = None
        if up is None:
            up = await anyio.to_thread.run_sync(self._resume, uuid)
            if up is None:
                raise upload_unknown(uuid)
            up = self._live.setdefault(uuid, up)
        if up.repo != repo or up.done:
            raise upload_unknown(uuid)
        if up.expires < time.time():
            await self.cancel(up)
            raise upload_unknown(uuid)
        return up

    def _resume(self, uuid: str) -> Upload | None:
        row = self.state.upload(uuid)
        if row is None:
            return None
        try:
            fd = os.open(row.path, os.O_RDONLY)
        except OSError:
            if not self.shared:     # with replicas, the row may have just moved on
                self.state.delete_upload(uuid)
            return None
        try:
            if not self.shared:
                try:   # a live writer (another server on this store) holds it: not ours
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
                if os.fstat(fd).st_size != row.offset:
                    self.state.delete_upload(uuid)
                    os.unlink(row.path)
                    return None
            elif os.fstat(fd).st_size < row.offset:
                return None         # not flushed by a writer that died: lost
            writer = self.store.blobs.writer()
            try:
                with os.fdopen(os.dup(fd), "rb") as src:
                    # Only what the row vouches for: a replica killed mid-request may
                    # have written more than it recorded.
                    left = row.offset
                    while left and (chunk := src.read(min(CHUNK, left))):
                        writer.write(chunk)
                        left -= len(chunk)
            except BaseException:
                writer.abort()
                raise
            now = time.time()
            up = Upload(uuid, row.repo, writer, row.started, now + self.ttl, gen=row.gen + 1)
            writer.flush()          # the next replica reads the file, not our buffer
            if self.shared and not self.state.move_upload(self._row(up), row.gen):
                writer.abort()      # another replica claimed it first
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(row.path)
        finally:
            os.close(fd)
        if not self.shared:
            self.state.put_upload(self._row(up))
        return up

    async def append(self, up: Upload, body: AsyncIterator[bytes], expect: int | None) -> int:
        """Write a request body at the session's offset; returns the bytes written.  A body
        longer or shorter than ``expect`` (a Content-Range's length) breaks the session."""
        buf = bytearray()
        got = 0
        try:
            async for chunk in body:
                if not chunk:
                    continue
                got += len(chunk)
                if expect is not None and got > expect:
                    raise RegistryHTTPError(400, "BLOB_UPLOAD_INVALID",
                                            "the chunk is longer than its Content-Range")
                if self.max_blob and up.offset + len(buf) + len(chunk) > self.max_blob:
                    raise RegistryHTTPError(413, "SIZE_INVALID",
                                            f"blob larger than the {self.max_blob}-byte limit")
                buf += chunk
                if len(buf) >= WRITE_SIZE:
                    data, buf = bytes(buf), bytearray()
                    await anyio.to_thread.run_sync(up.write, data)
            if buf:
                await anyio.to_thread.run_sync(up.write, bytes(buf))
            if expect is not None and got != expect:
                raise RegistryHTTPError(400, "BLOB_UPLOAD_INVALID",
                                        f"the chunk has {got} bytes, its Content-Range says "
                                        f"{expect}")
        except ConnectionAbortedError:
            # The client went away mid-chunk: what arrived is written and hashed in order,
            # so the session stands at a larger offset, which GET reports for a resume.
            if buf:
                await anyio.to_thread.run_sync(up.write, bytes(buf))
            await anyio.to_thread.run_sync(self._save, up)
            raise
        except BaseException:
            # A refused or failed chunk: the session cannot be trusted any more.
            await self.cancel(up)
            raise
        up.expires = time.time() + self.ttl
        try:
            await anyio.to_thread.run_sync(self._save, up)
        except RegistryHTTPError:
            await self.drop(up)
            raise
        return got

    async def finish(self, up: Upload, digest: Digest) -> None:
        """Check, protect and commit; the session ends either way."""
        def commit() -> None:
            writer = up.writer
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
                writer = other
            elif writer.digest != digest:
                raise IntegrityError(f"content has digest {writer.digest}")
            if self.shared and not self.state.end_upload(up.uuid, up.gen):
                raise _moved(up.uuid)           # another replica has it now
            self.lease.protect([str(digest)])   # before the rename: gc cannot take it
            writer.commit(digest, size)

        up.done = True
        self._live.pop(up.uuid, None)
        try:
            await anyio.to_thread.run_sync(commit)
        except IntegrityError as e:
            raise digest_invalid(f"upload does not match {digest}: {e}", str(digest)) from None
        finally:
            up.writer.abort()   # no-op after a commit
            if not self.shared:
                await anyio.to_thread.run_sync(self.state.delete_upload, up.uuid)
            else:
                await anyio.to_thread.run_sync(self.state.end_upload, up.uuid, up.gen)

    async def drop(self, up: Upload) -> None:
        """Forget a session another replica has taken over (its row stays theirs)."""
        up.done = True
        self._live.pop(up.uuid, None)
        up.writer.abort()

    async def cancel(self, up: Upload) -> None:
        up.done = True
        self._live.pop(up.uuid, None)
        up.writer.abort()
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(self.state.delete_upload, up.uuid)

    async def expire(self) -> int:
        """End idle sessions (ours and rows left by a dead process); returns how many."""
        now = time.time()
        n = 0
        for up in list(self._live.values()):
            if up.expires < now and not up.lock.locked():
                await self.cancel(up)
                n += 1

        def stale_rows() -> int:
            count = 0
            for row in self.state.expired_uploads(now):
                if row.uuid in self._live:
                    continue
                with contextlib.suppress(OSError):
                    fd = os.open(row.path, os.O_RDONLY)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        os.unlink(row.path)
                    except BlockingIOError:
                        continue
                    finally:
                        os.close(fd)
                self.state.delete_upload(row.uuid)
                count += 1
            return count

        return n + await anyio.to_thread.run_sync(stale_rows)

    def forget(self) -> None:
        """Server shutdown: sessions stay resumable.  Their rows and ingest files are
        kept; the files' locks go with the process, after which ``_resume`` (or, once the
        session has expired, gc's ingest sweep) takes them."""
        self._live.clear()


def _moved(uuid: str) -> RegistryHTTPError:
    return RegistryHTTPError(404, "BLOB_UPLOAD_UNKNOWN",
                             f"upload {uuid} was moved on by another request meanwhile")
