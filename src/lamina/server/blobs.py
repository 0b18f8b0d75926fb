"""Blob endpoints: GET/HEAD/DELETE ``/v2/<name>/blobs/<digest>`` and the upload
endpoints ``/v2/<name>/blobs/uploads/[<uuid>]`` (distribution-spec 1.1 "Pulling blobs",
"Pushing blobs", "Mounting a blob from another repository", "Deleting Blobs").

A repository sees a blob only when it is linked to it (an upload, a mount, one of its
manifests) and the bytes are in the blob storage (server/storage/: the store's blobs/,
or S3).  DELETE unlinks; the bytes go when gc finds nothing that reaches them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import anyio.to_thread

from lamina.digest import Digest
from lamina.server.errors import RegistryHTTPError, blob_unknown, digest_invalid
from lamina.server.http import Reply, Rq
from lamina.server.names import check_name, parse_digest
from lamina.server.storage import RangeNotSatisfiable
from lamina.server.uploads import Upload

if TYPE_CHECKING:
    from lamina.server.app import Registry

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")


async def visible(reg: Registry, repo: str, digest: Digest) -> bool:
    """Whether ``repo`` may see ``digest`` and its bytes are there."""
    key = str(digest)
    # Images that `lamina build`/`load`/`pull` tagged under this repository have no
    # links yet: adopt them, then look again.
    if not _sees(reg, repo, key) and not (await reg.adopt_repo(repo) and _sees(reg, repo, key)):
        return False
    return await anyio.to_thread.run_sync(reg.blobstore.has, digest)


def _sees(reg: Registry, repo: str, key: str) -> bool:
    return reg.state.linked(repo, key) or reg.state.member(repo, key) is not None


async def get_blob(reg: Registry, rq: Rq) -> Reply:
    digest = parse_digest(rq.arg)
    if not _sees(reg, rq.repo, str(digest)) and not (
            await reg.adopt_repo(rq.repo) and _sees(reg, rq.repo, str(digest))):
        raise blob_unknown(str(digest))
    headers = {"docker-content-digest": str(digest), "accept-ranges": "bytes",
               "content-type": "application/octet-stream",
               "etag": f'"{digest}"', "cache-control": "max-age=31536000"}
    store = reg.blobstore
    if store.name != "local" and reg.state.member(rq.repo, str(digest)) is not None \
            and await anyio.to_thread.run_sync(reg.store.blobs.has, digest):
        store = reg.manifest_blobs      # a manifest read as a blob: this store has it
    if rq.method == "HEAD":
        size = await anyio.to_thread.run_sync(store.size, digest)
        if size is None:
            raise blob_unknown(str(digest))
        # A HEAD is how a pusher asks "do you have it?": protect the answer from gc
        # until the manifest that names the blob arrives (store/gc.py).
        await anyio.to_thread.run_sync(reg.lease.protect, [str(digest)])
        headers["content-length"] = str(size)
        return Reply(200, headers)
    url = store.redirect_url(digest)
    if url is not None:
        # distribution's `redirect`: the bytes come from the object store itself; the
        # client drops its Authorization for the other origin (RFC 9110 §15.4)
        if not await anyio.to_thread.run_sync(store.has, digest):
            raise blob_unknown(str(digest))
        return Reply(307, {"location": url, "docker-content-digest": str(digest)})
    try:
        body = await anyio.to_thread.run_sync(store.open, digest, rq.headers.get("range"))
    except RangeNotSatisfiable as e:
        return Reply(416, {"content-range": f"bytes */{e.size}"})
    if body is None:
        raise blob_unknown(str(digest))
    if not body.partial:
        return Reply(200, headers, file=(body.source, 0, body.size))
    end = body.start + body.length - 1
    headers["content-range"] = f"bytes {body.start}-{end}/{body.size}"
    return Reply(206, headers, file=(body.source, body.start, body.length))


async def delete_blob(reg: Registry, rq: Rq) -> Reply:
    digest = parse_digest(rq.arg)
    if not await anyio.to_thread.run_sync(reg.state.unlink_blob, rq.repo, str(digest)):
        raise blob_unknown(str(digest))
    return Reply(202, {"docker-content-digest": str(digest)})


# -- uploads ----------------------------------------------------------------------------
def _upload_headers(rq: Rq, up: Upload) -> dict[str, str]:
    # Range is inclusive: bytes 0..offset-1 are in; "0-0" for an empty session is
    # docker-registry's spelling, which clients expect.
    end = max(up.offset - 1, 0)
    return {"location": f"/v2/{rq.name}/blobs/uploads/{up.uuid}", "range": f"0-{end}",
            "docker-upload-uuid": up.uuid}


def _blob_created(rq: Rq, digest: Digest) -> Reply:
    return Reply(201, {"location": f"/v2/{rq.name}/blobs/{digest}",
                       "docker-content-digest": str(digest)})


def _length(rq: Rq) -> int | None:
    value = rq.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise RegistryHTTPError(400, "SIZE_INVALID", f"invalid Content-Length {value[:40]!r}")
    return int(value)


def _check_limit(reg: Registry, length: int | None) -> None:
    limit = reg.cfg.limits.max_blob_bytes
    if limit and length is not None and length > limit:
        raise RegistryHTTPError(413, "SIZE_INVALID",
                                f"blob of {length} bytes is over the {limit}-byte limit")


async def _mount(reg: Registry, rq: Rq, digest: Digest) -> Reply | None:
    """Link ``digest`` into the repository from ``from`` (or, without it, from any
    repository the client may pull that has it); None when that cannot be done."""
    origin = rq.query("from")
    candidates: list[str] = []
    if origin:
        try:
            candidates = [check_name(origin)]
        except RegistryHTTPError:
            return None
    else:
        candidates = reg.state.repos_linking(str(digest))
    for repo in candidates:
        if repo == rq.repo or not reg.may(rq, repo, "pull"):
            continue
        if not await visible(reg, repo, digest):
            continue

        def link() -> bool:
            reg.lease.protect([str(digest)])     # then look: gc cannot slip in between
            if not reg.blobstore.has(digest):
                return False
            reg.state.link_blobs(rq.repo, [str(digest)])
            return True

        if await anyio.to_thread.run_sync(link):
            return _blob_created(rq, digest)
    return None


async def start_upload(reg: Registry, rq: Rq) -> Reply:
    mount = rq.query("mount")
    if mount is not None:
        try:
            mounted = await _mount(reg, rq, Digest.parse(mount))
        except Exception:  # noqa: BLE001 - a bad mount digest is "cannot mount": upload
            mounted = None
        if mounted is not None:
            return mounted
    digest_text = rq.query("digest")
    length = _length(rq)
    _check_limit(reg, length)
    up = await reg.uploads.start(rq.repo)
    if digest_text is not None:        # single-POST monolithic upload
        try:
            digest = parse_digest(digest_text)
        except RegistryHTTPError:
            await reg.uploads.cancel(up)
            raise
        async with up.lock:
            await reg.uploads.append(up, rq.stream(), length)
            await reg.uploads.finish(up, digest)
        await anyio.to_thread.run_sync(reg.state.link_blobs, rq.repo, [str(digest)])
        return _blob_created(rq, digest)
    headers = _upload_headers(rq, up)
    if reg.cfg.limits.chunk_min_length > 0:
        headers["oci-chunk-min-length"] = str(reg.cfg.limits.chunk_min_length)
    return Reply(202, headers)


async def upload_status(reg: Registry, rq: Rq) -> Reply:
    up = await reg.uploads.get(rq.arg, rq.repo)
    return Reply(204, _upload_headers(rq, up))


def _content_range(rq: Rq, up: Upload) -> int | None:
    """The chunk length a Content-Range announces (None: no header, a streamed body);
    416 when the chunk does not start where the upload stands."""
    text = rq.headers.get("content-range")
    if text is None:
        return None
    m = _CONTENT_RANGE.fullmatch(text.strip())
    if not m or int(m.group(2)) < int(m.group(1)):
        raise RegistryHTTPError(400, "BLOB_UPLOAD_INVALID",
                                f"invalid Content-Range {text[:60]!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if start != up.offset:
        raise RegistryHTTPError(416, "BLOB_UPLOAD_INVALID",
                                f"chunk starts at {start}, the upload is at {up.offset}",
                                headers=_upload_headers(rq, up))
    n = end - start + 1
    length = _length(rq)
    if length is not None and length != n:
        raise RegistryHTTPError(400, "SIZE_INVALID",
                                f"Content-Length {length} does not match Content-Range {text}")
    return n


async def _append(reg: Registry, rq: Rq, up: Upload) -> None:
    """Add the request's body to the upload: at the offset its Content-Range names (or
    the end), refused with 413 (and the session cancelled) past the blob size limit."""
    expect = _content_range(rq, up)
    length = expect if expect is not None else _length(rq)
    limit = reg.cfg.limits.max_blob_bytes
    if limit and length is not None and up.offset + length > limit:
        await reg.uploads.cancel(up)
        raise RegistryHTTPError(413, "SIZE_INVALID", f"blob over the {limit}-byte limit")
    await reg.uploads.append(up, rq.stream(), expect)


async def patch_upload(reg: Registry, rq: Rq) -> Reply:
    up = await reg.uploads.get(rq.arg, rq.repo)
    async with up.lock:
        if up.done:
            raise RegistryHTTPError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {up.uuid} has ended")
        await _append(reg, rq, up)
        return Reply(202, _upload_headers(rq, up))


async def finish_upload(reg: Registry, rq: Rq) -> Reply:
    up = await reg.uploads.get(rq.arg, rq.repo)
    text = rq.query("digest")
    async with up.lock:
        if up.done:
            raise RegistryHTTPError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {up.uuid} has ended")
        if text is None:
            raise digest_invalid("the closing PUT needs ?digest=")
        try:
            digest = parse_digest(text)
        except RegistryHTTPError:
            await reg.uploads.cancel(up)
            raise
        await _append(reg, rq, up)
        await reg.uploads.finish(up, digest)
    await anyio.to_thread.run_sync(reg.state.link_blobs, rq.repo, [str(digest)])
    return _blob_created(rq, digest)


async def cancel_upload(reg: Registry, rq: Rq) -> Reply:
    up = await reg.uploads.get(rq.arg, rq.repo)
    async with up.lock:
        await reg.uploads.cancel(up)
    return Reply(204)
