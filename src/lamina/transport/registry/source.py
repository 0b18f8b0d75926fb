"""``RegistrySource``: one repository of a registry as an ``ImageSource``.

Manifests are fetched with an ``Accept`` for OCI and Docker manifests and indexes, read
with a 4 MiB bound, checked against the digest asked for and against the registry's
``Docker-Content-Digest``, and kept (so copy's later ``open_blob`` of the same manifest
costs nothing).  Blobs stream: ``open_blob`` returns a ``VerifyingReader`` over a
``BlobStream`` that hashes as the consumer reads; when the connection drops mid-blob it
asks again with ``Range: bytes=<offset>-`` and carries on where it stopped if the
registry answers 206, or reads the full answer again and skips what it already
delivered if it answers 200 (so nothing is hashed twice).
"""

from __future__ import annotations

import contextlib
import io
import threading
from typing import Any
from urllib.parse import quote

from lamina.digest import Digest, VerifyingReader
from lamina.errors import (
    IntegrityError,
    InvalidInput,
    InvalidManifest,
    InvalidReference,
    LaminaError,
    TransportError,
)
from lamina.image import mediatypes as mt
from lamina.image.jsondoc import load_json, load_object
from lamina.image.manifest import MAX_MANIFEST_BYTES, Descriptor
from lamina.image.reference import Reference
from lamina.transport.base import NamedImage
from lamina.transport.registry.client import RegistryClient, header_digest
from lamina.transport.registry.errors import RegistryUnsupported
from lamina.transport.registry.options import RegistryOptions
from lamina.transport.registry.wire import READ_SIZE, HttpClient, Response, WireError

# Preference order: what lamina writes first, then Docker's; indexes are accepted so
# that copy can pick a platform (or copy them all).
ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST])
_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws")


def _media_type(resp: Response) -> str:
    return str(resp.headers.get("content-type", "")).split(";", 1)[0].strip().lower()


class RegistrySource:
    """An ``ImageSource`` over ``docker://registry/repository``.

    ``resolve`` takes a tag, a digest or a full reference into this repository; the
    returned descriptor names a manifest or index (platform choice is copy's job)."""

    concurrent_blobs = True   # thread-safe: copy may open several blobs at once

    def __init__(self, ref: Reference, opts: RegistryOptions = RegistryOptions(),
                 client: HttpClient | None = None) -> None:
        self.ref = ref
        self.opts = opts
        self.client = RegistryClient(ref.registry, opts, client)
        self.scopes = (f"repository:{ref.repository}:pull",)
        self._manifests: dict[Digest, bytes] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> str:
        return self.ref.registry

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self.ref.repository}/{kind}/{quote(reference, safe=':@')}"

    def _what(self, reference: str) -> str:
        sep = "@" if ":" in reference else ":"
        return f"manifest {self.ref.repository}{sep}{reference}"

    # -- manifests ---------------------------------------------------------------------
    def _get_manifest(self, reference: str, expected: Digest | None) -> Descriptor:
        what = self._what(reference)
        resp = self.client.send("GET", self._path("manifests", reference), what=what,
                                scopes=self.scopes, headers={"Accept": ACCEPT})
        try:
            length = resp.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
                raise InvalidManifest(f"{self.registry}: {what} is {length} bytes, over the "
                                      "4 MiB limit")
            raw = bytearray()
            try:
                for chunk in resp.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_MANIFEST_BYTES:
                        raise InvalidManifest(f"{self.registry}: {what} is over the 4 MiB "
                                              "limit")
            except WireError as e:
                raise TransportError(f"{self.registry}: {what}: {e}") from None
            media_type = _media_type(resp)
            served = header_digest(resp)
        finally:
            resp.close()
        data = bytes(raw)
        media_type = self._manifest_type(media_type, data, what)
        algorithm = expected.algorithm if expected else "sha256"
        digest = Digest.from_bytes(data, algorithm)
        if expected is not None and digest != expected:
            raise IntegrityError(f"{self.registry}: {what}: content has digest {digest} "
                                 "(corrupt or wrong manifest)")
        if served:
            try:
                claimed = Digest.parse(served)
            except InvalidReference:
                raise IntegrityError(f"{self.registry}: {what}: invalid Docker-Content-Digest "
                                     f"{served[:80]!r}") from None
            check = digest if claimed.algorithm == algorithm else Digest.from_bytes(
                data, claimed.algorithm)
            if check != claimed:
                raise IntegrityError(f"{self.registry}: {what}: Docker-Content-Digest "
                                     f"{claimed} does not match the bytes ({check})")
        with self._lock:
            self._manifests[digest] = data
        return Descriptor(media_type, digest, len(data))

    def _manifest_type(self, served: str, data: bytes, what: str) -> str:
        """The media type of a fetched manifest: the Content-Type if it is one lamina
        knows, else the document's own ``mediaType``; anything else is Unsupported."""
        if served in mt.MANIFESTS | mt.INDEXES:
            return served
        if served in _SCHEMA1:
            raise RegistryUnsupported(f"{self.registry}: {what} is a Docker schema 1 "
                                      "manifest, which lamina does not support",
                                      registry=self.registry)
        declared: Any = None
        with contextlib.suppress(InvalidManifest):
            obj = load_json(data, what)
            declared = obj.get("mediaType") if isinstance(obj, dict) else None
        if isinstance(declared, str) and declared in mt.MANIFESTS | mt.INDEXES and served in (
                "", "application/json", "text/plain", "application/octet-stream"):
            return declared
        shown = served or (declared if isinstance(declared, str) else "") or "none"
        raise RegistryUnsupported(f"{self.registry}: {what} has unsupported media type "
                                  f"{shown}", registry=self.registry)

    def resolve(self, name: str | None = None) -> Descriptor:
        """``None``: the reference this source was opened with (its digest, else its
        tag, else ``latest``); else a tag, a digest, or a full reference into this
        repository."""
        ref = self.ref
        if name is not None:
            if name.startswith(("sha256:", "sha512:")):
                ref = Reference(ref.registry, ref.repository, None, Digest.parse(name))
            elif any(c in name for c in "/@"):
                ref = Reference.parse(name)
                if (ref.registry, ref.repository) != (self.ref.registry, self.ref.repository):
                    raise InvalidInput(f"{name} is not in {self.ref.name}")
            else:
                ref = Reference(ref.registry, ref.repository, name, None)
        if ref.digest is not None:
            return self._get_manifest(str(ref.digest), ref.digest)
        return self._get_manifest(ref.tag or "latest", None)

    def fetch_manifest_bytes(self, desc: Descriptor) -> bytes:
        """The bytes of a manifest or index (cached from ``resolve``), verified."""
        with self._lock:
            data = self._manifests.get(desc.digest)
        if data is None:
            if desc.size > MAX_MANIFEST_BYTES:
                raise InvalidManifest(f"{self.registry}: manifest {desc.digest} is "
                                      f"{desc.size} bytes, over the 4 MiB limit")
            self._get_manifest(str(desc.digest), desc.digest)
            with self._lock:
                data = self._manifests[desc.digest]
        if len(data) != desc.size:
            raise IntegrityError(f"{self.registry}: manifest {desc.digest}: got {len(data)} "
                                 f"bytes, expected {desc.size}")
        return data

    # -- blobs -------------------------------------------------------------------------
    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        if desc.media_type in mt.MANIFESTS | mt.INDEXES:
            data = self.fetch_manifest_bytes(desc)
            return VerifyingReader(io.BytesIO(data), desc.digest, desc.size,
                                   what=f"{self.registry}: manifest")
        stream = BlobStream(self.client, self._path("blobs", str(desc.digest)), self.scopes,
                            desc, f"blob {desc.digest} of {self.ref.repository}")
        return VerifyingReader(stream, desc.digest, desc.size,
                               what=f"{self.registry}: blob")

    def blob_ranges(self, desc: Descriptor) -> BlobRanges:
        """Byte ranges of a blob, each its own request (a delta pull's)."""
        return BlobRanges(self.client, self._path("blobs", str(desc.digest)), self.scopes,
                          desc, f"blob {desc.digest} of {self.ref.repository}")

    # -- listing -----------------------------------------------------------------------
    def tags(self) -> list[str]:
        """Every tag of the repository (following ``Link`` pagination)."""
        out: list[str] = []
        target = f"/v2/{self.ref.repository}/tags/list"
        for _ in range(1000):
            resp = self.client.send("GET", target, what=f"tags of {self.ref.repository}",
                                    scopes=self.scopes)
            try:
                body = resp.read() if int(resp.headers.get("content-length") or 0) \
                    <= MAX_MANIFEST_BYTES else b""
                link = resp.headers.get("link")
            finally:
                resp.close()
            try:
                tags = load_object(body, "tag list").get("tags") or []
            except InvalidManifest:
                raise TransportError(f"{self.registry}: tags of {self.ref.repository}: "
                                     "not a tag list") from None
            if not isinstance(tags, list):
                tags = []
            out.extend(t for t in tags if isinstance(t, str))
            if not link or "<" not in link:
                break
            target = resp.join(link[link.index("<") + 1:link.index(">")])
        return out

    def images(self) -> list[NamedImage]:
        return [NamedImage(str(self.ref.with_tag(t)), self.resolve(t)) for t in self.tags()]

    def cancel(self) -> None:
        """Ctrl-C: blob reads on copy's workers end now (``Cancelled``)."""
        self.client.cancel()

    def close(self) -> None:
        self.client.close()


class _BlobAt:
    """One blob of a repository, as the requests for it name it."""

    def __init__(self, client: RegistryClient, path: str, scopes: tuple[str, ...],
                 desc: Descriptor, what: str) -> None:
        self.client = client
        self.path = path
        self.scopes = scopes
        self.desc = desc
        self.what = what


class BlobStream(_BlobAt):
    """A blob's bytes from the registry, resumed after dropped connections.

    ``read`` hands out what the response body delivers; when the connection breaks (or
    the body ends short) it waits, asks again from ``offset`` and goes on.  Attempts
    that bring no new byte count against ``RegistryOptions.retries``; one that made
    progress resets the count, so a long download over a flaky link still finishes."""

    def __init__(self, client: RegistryClient, path: str, scopes: tuple[str, ...],
                 desc: Descriptor, what: str) -> None:
        super().__init__(client, path, scopes, desc, what)
        self.offset = 0            # bytes handed out so far
        self.resumed = 0           # requests after the first (for tests and progress)
        self._skip = 0             # bytes of a restarted (200) answer already handed out
        self._resp: Response | None = None
        self._failures = 0
        self._open()

    def _open(self) -> None:
        headers = {"Accept-Encoding": "identity"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
        resp = self.client.send("GET", self.path, what=self.what, scopes=self.scopes,
                                headers=headers, ok=(200, 206), follow_redirects=True)
        self._skip = 0
        if resp.status_code == 206:
            start = _range_start(resp.headers.get("content-range", ""))
            if start != self.offset:
                resp.close()
                raise TransportError(f"{self.client.registry}: {self.what}: asked for bytes "
                                     f"from {self.offset}, got a range from {start}")
        elif self.offset:
            self._skip = self.offset   # no Range support: full body again, skip the head
        # Bodies are read as sent (no Content-Encoding is asked for or decoded: the digest
        # is of the bytes as stored), piece by piece as they arrive, so a drop loses
        # nothing that was received.
        self._resp = resp

    def start_at(self, offset: int) -> bool:
        """Before the first read: ask for the blob from ``offset`` on instead (the store
        kept the bytes before it from an interrupted pull).  The answer already asked
        for is dropped with its connection."""
        if self.offset or not 0 < offset < self.desc.size:
            return False
        self._close_resp()
        self.offset = offset
        try:
            self._open()
        except LaminaError:
            self.offset = 0    # a registry refusing the range: the whole blob, as before
            self._open()
            return False
        return True

    def _drop(self, reason: str) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._failures >= self.client.opts.retries:
            raise TransportError(
                f"{self.client.registry}: {self.what}: connection lost after {self.offset} "
                f"of {self.desc.size} bytes, {self._failures} retries: {reason}")
        self.client.pause(self._failures)
        self._failures += 1
        self.resumed += 1
        self._open()

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes as soon as some have arrived (all that is left for n < 0);
        b"" only at the end of the blob.  Pieces are handed on as received, not gathered
        into ``n``-byte blocks."""
        if n is None or n < 0:
            parts = []
            while chunk := self.read(READ_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        if not n:
            return b""
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(memoryview(buf)[:got])

    def readinto(self, buf: memoryview | bytearray) -> int:
        """What one socket read brings, into ``buf``; 0 only at the end of the blob.
        A broken or short body is resumed (see the class); bytes a restarted (200)
        answer repeats are skipped, so the consumer sees each byte once."""
        view = memoryview(buf).cast("B")
        while True:
            if self._resp is None:
                return 0
            try:
                n = self._resp.readinto1(view)
            except WireError as e:
                self._drop(str(e) or type(e).__name__)
                continue
            if not n:
                if self.offset < self.desc.size:
                    self._drop("the body ended early")
                    continue
                self._close_resp()
                return 0
            if self._skip:
                cut = min(self._skip, n)
                self._skip -= cut
                if cut == n:
                    continue
                view[:n - cut] = view[cut:n]
                n -= cut
            self.offset += n
            self._failures = 0   # progress: a later drop gets the full number of retries
            return n

    def _close_resp(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def close(self) -> None:
        self._close_resp()


class BlobRanges(_BlobAt):
    """``read(offset, length)``: exactly those bytes of a blob, by ``Range``.  A registry
    that answers with the whole body (200) or another range than asked (a wrong
    ``Content-Range``) gets ``TransportError``: the delta pull then fetches the blob
    whole.  A connection lost mid-range is asked again (``RegistryOptions.retries``)."""

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length - 1
        if length <= 0 or end >= self.desc.size:
            raise InvalidInput(f"{self.what}: bytes {offset}-{end} lie outside the blob")
        for attempt in range(self.client.opts.retries + 1):
            resp = self.client.send("GET", self.path, what=self.what, scopes=self.scopes,
                                    headers={"Range": f"bytes={offset}-{end}",
                                             "Accept-Encoding": "identity"},
                                    ok=(200, 206), follow_redirects=True)
            try:
                got = resp.headers.get("content-range", "")
                if resp.status_code != 206 or got.split("/")[0] != f"bytes {offset}-{end}":
                    raise TransportError(
                        f"{self.client.registry}: {self.what}: asked for bytes {offset}-{end},"
                        f" got {'a ' + got if resp.status_code == 206 else 'the whole blob'}")
                data = bytearray()
                while len(data) <= length:
                    piece = resp.read1(min(READ_SIZE, length + 1 - len(data)))
                    if not piece:
                        break
                    data += piece
            except WireError as e:
                if attempt >= self.client.opts.retries:
                    raise TransportError(f"{self.client.registry}: {self.what}: "
                                         f"{e}") from None
                self.client.pause(attempt)
                continue
            finally:
                resp.close()
            if len(data) != length:
                raise TransportError(f"{self.client.registry}: {self.what}: range "
                                     f"{offset}-{end} brought {len(data)} bytes")
            return bytes(data)
        raise AssertionError("unreachable")


def _range_start(content_range: str) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, _, rest = content_range.partition(" ")
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None
