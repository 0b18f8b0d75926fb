"""Blob upload sessions (distribution-spec 1.1 "Pushing blobs").

A session is an ``Ingest`` of the blob storage (server/storage/): the bytes hashed as
they are written, then at ``finish`` the digest checked, the blob registered in the
server's lease and made visible — by the driver's own commit, so nothing unverified is
ever visible under a digest and a blob pushed twice is stored once.

Sessions live in memory (a running hash is in the process) and in ``server_uploads``
(repository, the driver's state, offset).  A session the process lost — the server
restarted between two PATCHes, or another replica on shared storage took it — is
resumed from its row by the driver (local: re-hashing the ingest file; S3: the saved
hash state and parts).  On shared storage the row is the truth: a live session whose row
moved on (another replica continued it) is dropped and resumed from the row.

The row carries a generation, bumped by every request that moves the session (with
shared metadata, server/meta_pg.py): a process goes on with the ingest (and running hash)
it holds only while the row is still at the generation it wrote, and claims the session
by a conditional update (``move_upload``); the closing PUT claims it by a conditional
delete.  A process that loses that race, or finds the session moved while it wrote,
drops its copy and answers BLOB_UPLOAD_UNKNOWN; the row is never lost.

Each session has an ``asyncio.Lock``: requests on one session run one at a time, so a
second PATCH racing the first sees the new offset and gets its 416.

Replicas (a shared metadata database, ``Db.shared``, or shared blob storage such as S3):
any replica may continue a session.  The row carries a generation, bumped by every
request that moves the session; a replica continues from the ingest (and running hash)
it holds only while the row is still at the generation it last wrote, and otherwise
resumes from the row — the local driver re-hashes the first ``offset`` bytes of the
ingest file the row names, the S3 driver restores the saved hash state — and claims the
session with a conditional update (``move_upload``).  A replica that loses that race,
or finds the session moved while it wrote, forgets its copy and answers
BLOB_UPLOAD_UNKNOWN; the row, which says where the session stands, is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio.to_thread

from lamina.digest import CHUNK, Digest
from lamina.errors import IntegrityError
from lamina.server.errors import RegistryHTTPError, digest_invalid, upload_unknown
from lamina.server.metadata import Lease
from lamina.server.state import RegistryState, UploadRow
from lamina.server.storage import BlobStorage, Ingest, SessionHeld, StorageUnavailable

# Body bytes are gathered into writes of this size, each hashed and written in a worker
# thread (hashlib and file writes release the GIL: two uploads use two cores).
WRITE_SIZE = CHUNK


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
    ingest: Ingest
    started: float
    expires: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: bool = False
    gen: int = 0            # the row's generation this process last wrote

    @property
    def offset(self) -> int:
        return self.ingest.offset

    def write(self, data: bytes) -> None:
        """Hash and write (blocking: in a worker thread)."""
        self.ingest.write(data)


class Uploads:
    def __init__(self, storage: BlobStorage, state: RegistryState, lease: Lease,
                 ttl: float, max_blob: int) -> None:
        self.storage = storage
        self.state = state
        self.lease = lease
        self.ttl = ttl
        self.max_blob = max_blob
        self._live: dict[str, Upload] = {}

    def __len__(self) -> int:
        return len(self._live)

    def _row(self, up: Upload) -> UploadRow:
        return UploadRow(up.uuid, up.repo, up.ingest.state(), up.offset, up.started,
                         up.expires, up.gen)

    @property
    def shared(self) -> bool:
        return self.state.db.shared or self.storage.shared

    def _save(self, up: Upload) -> None:
        """Record where ``up`` stands (blocking): make its bytes resumable (the driver's
        checkpoint), then, with replicas, move the row on only if nobody else has."""
        up.ingest.checkpoint()
        if not self.shared:
            self.state.put_upload(self._row(up))
            return
        row = self._row(up)
        if not self.state.move_upload(dataclasses.replace(row, gen=up.gen + 1), up.gen):
            raise _moved(up.uuid)
        up.gen += 1

    async def start(self, repo: str) -> Upload:
        def create() -> Upload:
            now = time.time()
            uuid = new_uuid()
            up = Upload(uuid, repo, self.storage.ingest(uuid), now, now + self.ttl)
            try:
                self.state.put_upload(self._row(up))
            except BaseException:
                up.ingest.abort()
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
            if row is None or row.gen != up.gen or row.path != up.ingest.state():
                # Another replica moved (or ended) it: what this one holds is stale.
                await self.drop(up)
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
            ingest = self.storage.resume(uuid, row.path, row.offset)
        except SessionHeld:
            return None
        if ingest is None:
            if not self.shared:     # with replicas, the row may have just moved on
                self.state.delete_upload(uuid)
            return None
        up = Upload(uuid, row.repo, ingest, row.started, time.time() + self.ttl,
                    gen=row.gen + 1)
        if not self.shared:
            self.state.put_upload(self._row(up))
        elif not self.state.move_upload(self._row(up), row.gen):
            ingest.forget()         # another replica claimed it first
            return None
        ingest.claimed()
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
        except StorageUnavailable:
            # The storage failed mid-request: this copy of the session cannot be
            # trusted, its row (the last checkpoint) can — the next request resumes it.
            await self.drop(up)
            raise
        except BaseException:
            # A refused or failed chunk: the session cannot be trusted any more.
            await self.cancel(up)
            raise
        up.expires = time.time() + self.ttl
        try:
            await anyio.to_thread.run_sync(self._save, up)
        except (RegistryHTTPError, StorageUnavailable):
            await self.drop(up)
            raise
        return got

    async def finish(self, up: Upload, digest: Digest) -> None:
        """Check, protect and commit; the session ends either way."""
        moved = False

        def protect() -> None:
            # verified; now claim the end, and keep gc off it until a manifest names it
            nonlocal moved
            if self.shared and not self.state.end_upload(up.uuid, up.gen):
                moved = True
                raise _moved(up.uuid)           # another replica has it now
            self.lease.protect([str(digest)])

        up.done = True
        self._live.pop(up.uuid, None)
        try:
            await anyio.to_thread.run_sync(up.ingest.commit, digest, protect)
        except IntegrityError as e:
            raise digest_invalid(f"upload does not match {digest}: {e}", str(digest)) from None
        finally:
            if moved:                           # theirs now: leave its bytes alone
                up.ingest.forget()
            else:
                await anyio.to_thread.run_sync(up.ingest.abort)    # no-op after a commit
                await anyio.to_thread.run_sync(self._end, up)

    def _end(self, up: Upload) -> None:
        """Delete the session's row (blocking); with replicas only while it is still
        this process's (an expired copy here must not end a session another replica
        has moved on)."""
        if self.shared:
            self.state.end_upload(up.uuid, up.gen)
        else:
            self.state.delete_upload(up.uuid)

    async def drop(self, up: Upload) -> None:
        """Forget a session another replica has taken over, or whose copy here a storage
        failure spoiled (its row stays: the next request resumes from it)."""
        up.done = True
        self._live.pop(up.uuid, None)
        up.ingest.forget()

    async def cancel(self, up: Upload) -> None:
        up.done = True
        self._live.pop(up.uuid, None)
        with contextlib.suppress(StorageUnavailable):
            await anyio.to_thread.run_sync(up.ingest.abort)
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(self._end, up)

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
                if row.uuid in self._live or not self.storage.drop(row.path):
                    continue
                self.state.delete_upload(row.uuid)
                count += 1
            return count

        return n + await anyio.to_thread.run_sync(stale_rows)

    def forget(self) -> None:
        """Server shutdown: sessions stay resumable.  Their rows and ingest files are
        kept; the files' locks go with the process, after which ``_resume`` (or, once the
        session has expired, gc's ingest sweep or the expiry here) takes them."""
        self._live.clear()


def _moved(uuid: str) -> RegistryHTTPError:
    return RegistryHTTPError(404, "BLOB_UPLOAD_UNKNOWN",
                             f"upload {uuid} was moved on by another request meanwhile")
