"""``RegistrySink``: one repository of a registry as an ``ImageSink``.

The push loop follows the distribution-spec (as ggcr's ``remote.Write``): ``has_blob`` is a
HEAD (copy skips what is there); ``put_blob`` first tries a cross-repository mount when
``mount_from`` names another repository of the same registry that has the blob
(``POST ?mount=&from=``: 201 is done, 202 opens an ordinary upload session), else opens
a session with ``POST``; then either one streamed ``PUT ?digest=`` with a
``Content-Length`` (monolithic, the default) or ``PATCH`` chunks of ``chunk_size``
(at least the registry's ``OCI-Chunk-Min-Length``) and a closing ``PUT``.  Upload
locations may be relative or absolute.  ``put_manifest`` PUTs by tag (for each name)
or by digest (index children, unnamed images).

What happened to each blob is recorded in ``results`` (``str(digest)`` → ``BlobPush``)
and reported to ``on_blob`` as it happens, so the CLI can print ``Layer already
exists`` / ``Mounted from X`` / ``Pushed``.  ``on_blob`` may be called from copy's worker
threads.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from lamina.digest import CHUNK, Digest, VerifyingReader
from lamina.errors import IntegrityError, InvalidInput, InvalidManifest, LaminaError
from lamina.image.manifest import MAX_MANIFEST_BYTES, Descriptor
from lamina.image.reference import Reference
from lamina.transport.base import Progress
from lamina.transport.registry.client import RegistryClient, header_digest, resolve_location
from lamina.transport.registry.errors import RegistryError
from lamina.transport.registry.options import RegistryOptions
from lamina.transport.registry.wire import (
    Cancelled,
    FileBody,
    HttpClient,
    Response,
    WireError,
)

PushKind = Literal["exists", "mounted", "pushed"]


@dataclass(frozen=True)
class BlobPush:
    """The fate of one blob in a push: ``exists`` (HEAD found it), ``mounted`` (from
    ``mounted_from``, another repository of the registry) or ``pushed`` (uploaded;
    ``chunks`` PATCH requests, 0 for monolithic)."""

    digest: Digest
    kind: PushKind
    size: int
    mounted_from: str | None = None
    chunks: int = 0


class RegistrySink:
    """An ``ImageSink`` over ``docker://registry/repository``.

    ``mount_from(desc)`` returns a repository name on the same registry that holds the
    blob (the store remembers where blobs came from), or None."""

    accepts_index = True
    concurrent_blobs = True   # thread-safe: copy may put several blobs at once

    def __init__(self, ref: Reference, opts: RegistryOptions = RegistryOptions(),
                 client: HttpClient | None = None,
                 mount_from: Callable[[Descriptor], str | None] | None = None,
                 on_blob: Callable[[BlobPush], None] | None = None) -> None:
        self.ref = ref
        self.opts = opts
        self.client = RegistryClient(ref.registry, opts, client)
        self.scopes = (f"repository:{ref.repository}:pull,push",)
        self.mount_from = mount_from
        self.on_blob = on_blob
        self.results: dict[str, BlobPush] = {}
        self._lock = threading.Lock()
        self._sessions: set[str] = set()   # open upload sessions (abort cancels)

    @property
    def registry(self) -> str:
        return self.ref.registry

    def _blob_what(self, desc: Descriptor) -> str:
        return f"blob {desc.digest} of {self.ref.repository}"

    def _record(self, push: BlobPush) -> None:
        with self._lock:
            self.results[str(push.digest)] = push
        if self.on_blob is not None:
            self.on_blob(push)

    # -- blobs -------------------------------------------------------------------------
    def has_blob(self, desc: Descriptor) -> bool:
        resp = self.client.send("HEAD", f"/v2/{self.ref.repository}/blobs/{desc.digest}",
                                what=self._blob_what(desc), scopes=self.scopes, ok=(200, 404))
        resp.close()
        if resp.status_code == 404:
            return False
        self._record(BlobPush(desc.digest, "exists", desc.size))
        return True

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        reader = stream if isinstance(stream, VerifyingReader) else VerifyingReader(
            stream, desc.digest, desc.size)
        what = self._blob_what(desc)
        location: str | None = None
        min_chunk = 0
        origin = self.mount_from(desc) if self.mount_from is not None else None
        if origin and origin != self.ref.repository:
            try:
                resp = self.client.send(
                    "POST", f"/v2/{self.ref.repository}/blobs/uploads/", what=what,
                    scopes=(*self.scopes, f"repository:{origin}:pull"),
                    params={"mount": str(desc.digest), "from": origin}, ok=(201, 202))
            except RegistryError:
                resp = None   # mount refused (no access to origin, …): upload instead
            if resp is not None:
                resp.close()
                if resp.status_code == 201:
                    if progress is not None:
                        progress(desc.size, desc.size)
                    self._record(BlobPush(desc.digest, "mounted", desc.size, origin))
                    return
                location = resolve_location(resp, what, self.registry)
                min_chunk = _int(resp.headers.get("oci-chunk-min-length"))
        if location is None:
            resp = self.client.send("POST", f"/v2/{self.ref.repository}/blobs/uploads/",
                                    what=what, scopes=self.scopes, ok=(202,))
            resp.close()
            location = resolve_location(resp, what, self.registry)
            min_chunk = _int(resp.headers.get("oci-chunk-min-length"))
        with self._lock:
            self._sessions.add(location)
        try:
            if self.opts.chunk_size:
                chunks = self._upload_chunked(desc, reader, location, max(self.opts.chunk_size,
                                                                          min_chunk), progress)
            else:
                self._upload_monolithic(desc, reader, location, progress)
                chunks = 0
        except BaseException:
            self._cancel(location)
            raise
        with self._lock:
            self._sessions.discard(location)
        self._record(BlobPush(desc.digest, "pushed", desc.size, None, chunks))

    def _upload_monolithic(self, desc: Descriptor, reader: VerifyingReader,
                           location: str, progress: Progress | None) -> None:
        file = _plain_file(reader, desc.size)
        if file is not None:
            # A blob from the store leaves by sendfile(2), never entering Python.  It is
            # not hashed again here: the store checked it when it came in, and the
            # registry checks it now (distribution-spec "Pushing a blob monolithically":
            # the closing PUT carries ?digest=, which the registry verifies, answering
            # 400 DIGEST_INVALID on a mismatch), so bit rot on disk cannot be pushed.
            content: FileBody | Iterator[bytes] = FileBody(
                file, desc.size, progress=None if progress is None
                else (lambda sent: progress(sent, desc.size)))
        else:
            content = self._stream(desc, reader, progress)
        resp = self.client.send(
            "PUT", location, what=self._blob_what(desc), scopes=self.scopes,
            params={"digest": str(desc.digest)}, content=content, ok=(201, 204),
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(desc.size)})
        resp.close()
        self._check_digest(resp, desc, self._blob_what(desc))

    @staticmethod
    def _stream(desc: Descriptor, reader: VerifyingReader,
                progress: Progress | None) -> Iterator[bytes]:
        def body() -> Iterator[bytes]:
            done = 0
            while chunk := reader.read(CHUNK):
                yield chunk
                done += len(chunk)
                if progress is not None:
                    progress(done, desc.size)
            reader.verify()   # a short or corrupt source fails here, before the 201

        return body()

    def _upload_chunked(self, desc: Descriptor, reader: VerifyingReader, location: str,
                        size: int, progress: Progress | None) -> int:
        """PATCH every chunk but the last, which travels with the closing PUT: only that
        one may be shorter than ``OCI-Chunk-Min-Length`` (distribution-spec 1.1)."""
        what = self._blob_what(desc)
        offset = 0
        chunks = 0
        while True:
            data = _read_exactly(reader, size)
            if offset + len(data) >= desc.size:
                break   # the last piece (or nothing): it goes with the PUT
            resp = self.client.send(
                "PATCH", location, what=what, scopes=self.scopes, content=data, ok=(202,),
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{offset + len(data) - 1}",
                         "Content-Length": str(len(data))})
            resp.close()
            with self._lock:
                self._sessions.discard(location)
                location = resolve_location(resp, what, self.registry)
                self._sessions.add(location)
            offset += len(data)
            chunks += 1
            if progress is not None:
                progress(offset, desc.size)
        reader.verify()
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        if data:
            headers["Content-Range"] = f"{offset}-{offset + len(data) - 1}"
        resp = self.client.send("PUT", location, what=what, scopes=self.scopes,
                                params={"digest": str(desc.digest)}, content=data,
                                ok=(201, 204), headers=headers)
        resp.close()
        if data:
            chunks += 1
            if progress is not None:
                progress(offset + len(data), desc.size)
        self._check_digest(resp, desc, what)
        return chunks

    def _check_digest(self, resp: Response, desc: Descriptor, what: str) -> None:
        served = header_digest(resp)
        if served and served != str(desc.digest):
            raise IntegrityError(f"{self.registry}: {what}: the registry stored it as "
                                 f"{served}")

    def _cancel(self, location: str) -> None:
        """Best effort: tell the registry to drop an upload session we abandon."""
        with self._lock:
            self._sessions.discard(location)
        # after cancel() nothing more is sent: the registry expires the session itself
        with contextlib.suppress(LaminaError, WireError, Cancelled):
            self.client.http.request("DELETE", location,
                                     headers=_auth(self.client, self.scopes)).close()

    # -- manifests ---------------------------------------------------------------------
    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"manifest {desc.digest} is {len(raw)} bytes, over the "
                                  "4 MiB limit registries accept")
        if len(raw) != desc.size or Digest.from_bytes(raw, desc.digest.algorithm) != desc.digest:
            raise IntegrityError(f"manifest {desc.digest}: the bytes to push do not match "
                                 "the descriptor")
        targets: list[str] = []
        for name in names or []:
            ref = Reference.parse(name)
            if (ref.registry, ref.repository) != (self.ref.registry, self.ref.repository):
                raise InvalidInput(f"cannot name {ref.familiar} in a push to {self.ref.name}")
            targets.append(ref.tag or str(ref.digest or desc.digest))
        if not targets:
            targets = [str(desc.digest)]
        for target in dict.fromkeys(targets):
            sep = "@" if ":" in target else ":"
            what = f"manifest {self.ref.repository}{sep}{target}"
            resp = self.client.send(
                "PUT", f"/v2/{self.ref.repository}/manifests/{target}", what=what,
                scopes=self.scopes, content=raw, ok=(200, 201, 202, 204),
                headers={"Content-Type": desc.media_type})
            resp.close()
            self._check_digest(resp, desc, what)

    def cancel(self) -> None:
        """Ctrl-C: uploads on copy's workers end now; ``abort`` then drops the sessions."""
        self.client.cancel()

    def close(self) -> None:
        self.client.close()

    def abort(self) -> None:
        """Cancel upload sessions still open; what the registry already committed stays
        (blobs nothing names are the registry's garbage collector's business)."""
        with self._lock:
            sessions = list(self._sessions)
        for location in sessions:
            self._cancel(location)
        self.close()


def _int(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def _plain_file(reader: VerifyingReader, size: int) -> BinaryIO | None:
    """The regular file under ``reader`` if it is a store blob (verified when it was
    stored), unread and ``size`` bytes long; else None (the bytes stream through the
    reader and are hashed: an OCI layout on disk was never checked by anyone).  A store
    blob kept as chunks is no such file (store/chunks.py ``ChunkedFile``): it streams."""
    raw = reader.raw
    if not reader.at_rest or reader.count or not isinstance(raw, io.BufferedReader):
        return None
    try:
        st = os.fstat(raw.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != size or raw.tell() != 0:
            return None
    except (OSError, ValueError):
        return None
    return raw


def _read_exactly(reader: VerifyingReader, size: int) -> bytes:
    parts: list[bytes] = []
    have = 0
    while have < size:
        chunk = reader.read(min(CHUNK, size - have))
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _auth(client: RegistryClient, scopes: tuple[str, ...]) -> dict[str, str]:
    try:
        header = client.auth.header(scopes, "upload")
    except LaminaError:
        return {}
    return {"Authorization": header} if header else {}
