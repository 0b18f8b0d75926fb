"""Blob storage in an S3 bucket (AWS, Ceph RADOS Gateway, MinIO…): ``[storage] driver =
"s3"``.  The client is boto3 (docs/design-notes.md: "Blobs in S3" says why), addressed
path-style, imported only when this driver is used.

Layout (distribution's, registry/storage/paths.go, without its repository links, which
live in the metadata):

    <prefix>blobs/<algorithm>/<first two hex>/<hex>     a blob, its bytes only
    <prefix>_uploads/<uuid>/data                        an upload, completed, unverified
    <prefix>_uploads/<uuid>/tail-<offset>               bytes past the last part

An upload streams: bytes are hashed as they arrive and sent as multipart-upload parts of
``part_size`` (S3's minimum part is 5 MiB, so at most one part per upload waits in
memory).  At the end of each request the session is made resumable by any replica:
what is short of a part is written as a ``tail-<offset>`` object, and the row keeps the
UploadId, the parts' ETags, the offset and the SHA-256 state (hashstate.py) — S3 cannot
read parts back before the upload completes, so the running hash travels instead.

Commit: the digest is checked against the streamed hash first.  A blob that fits in one
part is PUT straight to its digest key; a multipart one is completed under its upload
key and then copied server-side to its digest key (CopyObject; UploadPartCopy in 1 GiB
ranges past S3's 5 GiB copy limit), so its bytes never pass through lamina twice.  Either
way the digest key only ever holds verified bytes, written by one atomic S3 call.
A sha512 digest (no resumable state kept for it) is checked by reading the completed
object back once.

Reads: a blob GET's Range goes to S3 as it came; with ``redirect = true`` the client
gets a 307 to a presigned GET instead (distribution's ``redirect`` option).  Failures to
reach the gateway (refused, reset, timed out, 5xx) raise ``StorageUnavailable`` after
botocore's own retry: the request gets 503, and the next one tries again; one log line
says the storage went away, one that it is back (``Outage``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from lamina.digest import Digest
from lamina.errors import IntegrityError, StoreError
from lamina.server.config import StorageConfig
from lamina.server.metadata import Outage
from lamina.server.storage import BlobBody, RangeNotSatisfiable, StorageUnavailable
from lamina.server.storage.hashstate import ResumableSha256

log = logging.getLogger("lamina.server")

MIN_PART = 5 * 1024 * 1024           # S3: every part but the last is at least this
MAX_COPY = 5 * 1024 ** 3             # S3: CopyObject's limit; beyond it UploadPartCopy
COPY_PART = 1024 ** 3
_RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class S3Storage:
    name = "s3"
    shared = True

    def __init__(self, cfg: StorageConfig) -> None:
        import boto3
        from botocore.config import Config

        self.cfg = cfg
        self.bucket = cfg.bucket
        self.prefix = cfg.prefix
        self.part_size = max(MIN_PART, cfg.part_size)
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=cfg.endpoint, region_name=cfg.region,
            aws_access_key_id=cfg.access_key, aws_secret_access_key=cfg.secret_key,
            config=Config(
                s3={"addressing_style": "path",
                    # lamina hashes every byte itself; signing the payload too would hash
                    # it twice (botocore signs it on plain http unless told not to)
                    "payload_signing_enabled": False},
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
                max_pool_connections=64))
        self.outage = Outage(cfg.endpoint or "(AWS)", "blob storage")
        self._ensure_bucket()

    # -- calls --------------------------------------------------------------------------
    def call(self, op: str, **kw: Any) -> Any:
        """One S3 call; unreachable or failing service → StorageUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            out = getattr(self.client, op)(Bucket=self.bucket, **kw)
        except ClientError as e:
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if status >= 500:
                raise self._down(f"S3 {self.cfg.endpoint} answered {status} to {op}") from None
            self.outage.up()
            raise
        except BotoCoreError as e:
            raise self._down(f"S3 {self.cfg.endpoint} cannot be reached: {e}") from None
        self.outage.up()
        return out

    def _down(self, message: str) -> StorageUnavailable:
        self.outage.down(message)
        return StorageUnavailable(message)

    @staticmethod
    def _code(e: Exception) -> str:
        resp = getattr(e, "response", None) or {}
        return str(resp.get("Error", {}).get("Code", ""))

    def _missing(self, e: Exception) -> bool:
        return self._code(e) in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.call("head_bucket")
        except StorageUnavailable:
            pass        # logged (Outage); blob requests get 503 until it answers
        except ClientError as e:
            if self._code(e) not in ("404", "NoSuchBucket"):
                raise StoreError(f"S3 bucket {self.bucket}: {e}") from None
            log.info("creating S3 bucket %s", self.bucket)
            self.call("create_bucket")

    def key(self, digest: Digest) -> str:
        hexd = digest.encoded
        return f"{self.prefix}blobs/{digest.algorithm}/{hexd[:2]}/{hexd}"

    def upload_prefix(self, uuid: str) -> str:
        return f"{self.prefix}_uploads/{uuid}/"

    # -- reads --------------------------------------------------------------------------
    def _head(self, digest: Digest) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.call("head_object", Key=self.key(digest))["ContentLength"])
        except ClientError as e:
            if self._missing(e):
                return None
            raise StoreError(f"S3 HEAD {self.key(digest)}: {e}") from None

    def has(self, digest: Digest) -> bool:
        return self._head(digest) is not None

    def size(self, digest: Digest) -> int | None:
        return self._head(digest)

    def read_bytes(self, digest: Digest, limit: int) -> bytes | None:
        body = self.open(digest, None)
        if body is None or body.size > limit:
            return None
        assert isinstance(body.source, S3Reader)
        try:
            return body.source.pread(body.size, 0) if body.size else b""
        finally:
            body.source.close()

    def put_bytes(self, digest: Digest, data: bytes) -> None:
        self.call("put_object", Key=self.key(digest), Body=data)

    def open(self, digest: Digest, byte_range: str | None) -> BlobBody | None:
        from botocore.exceptions import ClientError

        kw: dict[str, Any] = {"Key": self.key(digest)}
        if byte_range and _RANGE.fullmatch(byte_range.strip()):
            kw["Range"] = byte_range.strip()        # RFC 9110 ranges: S3 answers them
        try:
            resp = self.call("get_object", **kw)
        except ClientError as e:
            if self._missing(e):
                return None
            if self._code(e) == "InvalidRange":
                size = self._head(digest)
                if size is None:
                    return None
                raise RangeNotSatisfiable(size) from None
            raise StoreError(f"S3 GET {kw['Key']}: {e}") from None
        length = int(resp["ContentLength"])
        m = _CONTENT_RANGE.fullmatch(str(resp.get("ContentRange") or ""))
        if m:
            start, size = int(m.group(1)), int(m.group(3))
            return BlobBody(S3Reader(self, resp["Body"], start), size, start, length, True)
        return BlobBody(S3Reader(self, resp["Body"], 0), length, 0, length, False)

    def redirect_url(self, digest: Digest) -> str | None:
        if not self.cfg.redirect:
            return None
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(digest)},
            ExpiresIn=self.cfg.redirect_ttl))

    # -- uploads ------------------------------------------------------------------------
    def ingest(self, uuid: str) -> S3Ingest:
        return S3Ingest(self, self.upload_prefix(uuid))

    def resume(self, uuid: str, state: str, offset: int) -> S3Ingest | None:
        try:
            doc = json.loads(state)
            hasher = ResumableSha256(bytes.fromhex(doc["sha256"]))
            parts = [(int(n), str(etag), int(size)) for n, etag, size in doc["parts"]]
            tail = int(doc["tail"])
        except (ValueError, KeyError, TypeError, StoreError):
            return None
        if sum(p[2] for p in parts) + tail != offset:
            return None
        up = S3Ingest(self, self.upload_prefix(uuid), hasher, doc.get("upload_id"), parts)
        up.offset = offset
        if tail:
            data = self.read_key(up.tail_key(offset - tail), tail)
            if data is None or len(data) != tail:
                return None
            up.buf += data
            up.stored_tail = offset
        return up

    def read_key(self, key: str, limit: int) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            body = self.call("get_object", Key=key)["Body"]
        except ClientError as e:
            if self._missing(e):
                return None
            raise StoreError(f"S3 GET {key}: {e}") from None
        try:
            return bytes(body.read(limit + 1))
        finally:
            body.close()

    def drop(self, state: str) -> bool:
        try:
            doc = json.loads(state)
            prefix, upload_id = str(doc["key"]), doc.get("upload_id")
        except (ValueError, KeyError, TypeError):
            return True
        self.clear_upload(prefix, upload_id)
        return True

    def clear_upload(self, prefix: str, upload_id: str | None) -> None:
        from botocore.exceptions import ClientError

        if upload_id:
            with contextlib.suppress(ClientError):
                self.call("abort_multipart_upload", Key=prefix + "data", UploadId=upload_id)
        keys = [o["Key"] for page in self._pages(prefix) for o in page]
        for i in range(0, len(keys), 1000):
            self.call("delete_objects", Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def _pages(self, prefix: str) -> Iterator[list[dict[str, Any]]]:
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            resp = self.call("list_objects_v2", **kw)
            yield list(resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return

    def copy(self, src: str, dst: str, size: int) -> None:
        """Server-side: the bytes stay in the object store."""
        source = {"Bucket": self.bucket, "Key": src}
        if size <= MAX_COPY:
            self.call("copy_object", Key=dst, CopySource=source)
            return
        upload_id = self.call("create_multipart_upload", Key=dst)["UploadId"]
        try:
            parts = []
            for n, start in enumerate(range(0, size, COPY_PART), 1):
                end = min(start + COPY_PART, size) - 1
                r = self.call("upload_part_copy", Key=dst, UploadId=upload_id, PartNumber=n,
                              CopySource=source, CopySourceRange=f"bytes={start}-{end}")
                parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
            self.call("complete_multipart_upload", Key=dst, UploadId=upload_id,
                      MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                self.call("abort_multipart_upload", Key=dst, UploadId=upload_id)
            raise

    # -- management ---------------------------------------------------------------------
    def digests(self) -> Iterator[Digest]:
        for page in self._pages(f"{self.prefix}blobs/"):
            for obj in page:
                parts = str(obj["Key"])[len(self.prefix):].split("/")
                if len(parts) == 4:
                    with contextlib.suppress(Exception):
                        yield Digest.parse(f"{parts[1]}:{parts[3]}")

    def delete(self, digest: Digest) -> bool:
        if not self.has(digest):
            return False
        self.call("delete_object", Key=self.key(digest))
        return True

    def close(self) -> None:
        self.client.close()


class S3Reader:
    """A GET's body as a ``RangeFile`` for ``send_reply``, which reads it in order."""

    def __init__(self, storage: S3Storage, body: Any, start: int) -> None:
        self.storage = storage
        self.body = body
        self.pos = start

    def pread(self, n: int, offset: int, /) -> bytes:
        from botocore.exceptions import BotoCoreError

        if offset != self.pos:
            raise StoreError("S3 blob bodies are read in order")
        try:
            out = bytearray()
            while len(out) < n:
                data = self.body.read(n - len(out))
                if not data:
                    break
                out += data
        except BotoCoreError as e:
            raise StorageUnavailable(f"S3 read failed: {e}") from None
        self.pos += len(out)
        return bytes(out)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.body.close()


class S3Ingest:
    def __init__(self, storage: S3Storage, prefix: str, hasher: ResumableSha256 | None = None,
                 upload_id: str | None = None,
                 parts: list[tuple[int, str, int]] | None = None) -> None:
        self.s3 = storage
        self.prefix = prefix
        self.hasher = hasher or ResumableSha256()
        self.upload_id = upload_id
        self.parts = parts or []
        self.offset = 0
        self.buf = bytearray()          # bytes past the last part (< one part + a write)
        self.stored_tail = -1           # offset at which the stored tail object ends
        self.done = False

    @property
    def data_key(self) -> str:
        return self.prefix + "data"

    def tail_key(self, at: int) -> str:
        return f"{self.prefix}tail-{at}"

    def state(self) -> str:
        return json.dumps({"key": self.prefix, "upload_id": self.upload_id,
                           "parts": [list(p) for p in self.parts],
                           "sha256": self.hasher.state().hex(), "tail": len(self.buf)})

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.offset += len(data)
        self.buf += data
        while len(self.buf) >= self.s3.part_size:
            self._send_part(bytes(self.buf[:self.s3.part_size]))
            del self.buf[:self.s3.part_size]

    def _send_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = str(self.s3.call("create_multipart_upload",
                                              Key=self.data_key)["UploadId"])
        n = len(self.parts) + 1
        r = self.s3.call("upload_part", Key=self.data_key, UploadId=self.upload_id,
                         PartNumber=n, Body=data)
        self.parts.append((n, str(r["ETag"]), len(data)))

    def checkpoint(self) -> None:
        if len(self.buf) >= MIN_PART:       # a part may be short of part_size, not of 5 MiB
            self._send_part(bytes(self.buf))
            self.buf.clear()
        if self.buf and self.stored_tail != self.offset:
            # the bytes short of a part, for whichever replica takes the next request
            start = self.offset - len(self.buf)
            self.s3.call("put_object", Key=self.tail_key(start), Body=bytes(self.buf))
            self.stored_tail = self.offset

    def commit(self, digest: Digest, protect: Callable[[], None]) -> None:
        if digest.algorithm == "sha256" and self.hasher.hexdigest() != digest.encoded:
            raise IntegrityError(f"content has digest sha256:{self.hasher.hexdigest()}")
        final = self.s3.key(digest)
        if self.upload_id is None:          # one part or less: one verified PUT
            if digest.algorithm != "sha256":
                got = hashlib.new(digest.algorithm, self.buf).hexdigest()
                if got != digest.encoded:
                    raise IntegrityError(f"content has digest {digest.algorithm}:{got}")
            protect()
            self.s3.call("put_object", Key=final, Body=bytes(self.buf))
        else:
            if digest.algorithm == "sha256":
                protect()       # before completing: another replica may still claim it
            if self.buf:
                self._send_part(bytes(self.buf))
                self.buf.clear()
            self.s3.call("complete_multipart_upload", Key=self.data_key,
                         UploadId=self.upload_id, MultipartUpload={"Parts": [
                             {"PartNumber": n, "ETag": etag} for n, etag, _ in self.parts]})
            self.upload_id = None
            if digest.algorithm != "sha256":
                self._check_stored(digest)
                protect()
            if not self.s3.has(digest):     # pushed before: stored once
                self.s3.copy(self.data_key, final, self.offset)
        self.done = True
        self._clear()

    def _check_stored(self, digest: Digest) -> None:
        h = hashlib.new(digest.algorithm)
        body = self.s3.call("get_object", Key=self.data_key)["Body"]
        try:
            for data in iter(lambda: body.read(1 << 20), b""):
                h.update(data)
        finally:
            body.close()
        if h.hexdigest() != digest.encoded:
            raise IntegrityError(f"content has digest {digest.algorithm}:{h.hexdigest()}")

    def _clear(self) -> None:
        try:
            self.s3.clear_upload(self.prefix, self.upload_id)
        except StorageUnavailable:
            pass    # the outage is logged once; what is left under _uploads/ is never
            #         visible (a bucket lifecycle rule can abort stale multipart uploads)
        except Exception as e:  # noqa: BLE001 - leftovers under _uploads/ are harmless
            log.warning("could not remove upload leftovers %s: %s", self.prefix, e)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            self._clear()

    def forget(self) -> None:
        """The parts and tails are the session's, which another replica continues."""
        self.done = True
        self.buf = bytearray()

    def claimed(self) -> None:
        """The same UploadId and objects go on: nothing to drop."""
