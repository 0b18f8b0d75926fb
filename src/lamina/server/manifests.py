"""Manifest endpoints: GET/HEAD/PUT/DELETE ``/v2/<name>/manifests/<reference>``.

A pushed manifest is recorded exactly as ``StoreTransport.put_manifest`` records one:
its bytes as a blob, an image record with ``refs`` edges to its config and layers (or an
index's manifests), tagged ``docker.io/<name>:<tag>`` when pushed by tag, and the layers'
diff_ids when the config is an image config in the store.  So gc treats it as a root,
``lamina images`` lists it, and ``lamina run`` can run it.  Unlike a local load, moving a
tag never drops the old image record: a registry keeps the old manifest by digest.

Validation before anything is stored: the body parses as an OCI manifest/index or Docker
v2.2 manifest/list (``lamina.image.manifest``), its digest matches a digest reference,
it is within the size limit, and every blob (manifest) it names is linked to (a member
of) the repository — else MANIFEST_BLOB_UNKNOWN.  Descriptors with ``urls`` (foreign
layers) need not be present.  A ``subject`` need not exist (spec 1.1); the referrer is
recorded and answered with ``OCI-Subject``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio.to_thread

from lamina.digest import Digest
from lamina.errors import InvalidManifest, LaminaError, NotFound
from lamina.image import mediatypes as mt
from lamina.image.config import parse_config
from lamina.image.manifest import Index, Manifest, parse
from lamina.server.errors import RegistryHTTPError, digest_invalid, manifest_unknown
from lamina.server.http import Reply, Rq
from lamina.server.names import TAG, is_digest_ref, parse_digest, store_tag
from lamina.server.state import Referrer

if TYPE_CHECKING:
    from lamina.server.app import Registry

KNOWN_TYPES = mt.MANIFESTS | mt.INDEXES


def _content_type(rq: Rq) -> str | None:
    value = rq.headers.get("content-type")
    if not value:
        return None
    return value.split(";", 1)[0].strip()    # spec: registries SHOULD ignore parameters


async def _resolve(reg: Registry, rq: Rq) -> tuple[str, str]:
    """(digest, media type) of the reference in ``repo``; MANIFEST_UNKNOWN otherwise."""
    ref = rq.arg
    if is_digest_ref(ref):
        try:
            digest = str(Digest.parse(ref))
        except LaminaError:
            raise digest_invalid(f"invalid digest {ref[:150]!r}") from None
        hit = reg.state.member(rq.repo, digest)
        if hit is None and await reg.adopt_repo(rq.repo):
            hit = reg.state.member(rq.repo, digest)
        if hit is None:
            raise manifest_unknown(ref)
        return digest, hit[0]
    if not TAG.fullmatch(ref):
        raise manifest_unknown(ref[:150])     # conformance: an invalid tag is just unknown
    found = reg.state.resolve_tag(rq.repo, ref, store_tag(rq.repo, ref))
    if found is None:
        raise manifest_unknown(ref)
    digest, media_type, size = found
    if size is None:                           # tagged by the CLI: adopt it first
        await reg.adopt_repo(rq.repo)
    return digest, media_type


async def get_manifest(reg: Registry, rq: Rq) -> Reply:
    digest, media_type = await _resolve(reg, rq)
    raw = reg.manifest_bytes(digest)
    if raw is None and reg.manifest_blobs.name != "local":
        raw = await anyio.to_thread.run_sync(reg.load_manifest, digest)
    if raw is None:
        raise manifest_unknown(rq.arg[:150])
    headers = {"content-type": media_type, "docker-content-digest": digest,
               "etag": f'"{digest}"'}
    if rq.method == "HEAD":
        headers["content-length"] = str(len(raw))
        return Reply(200, headers)
    return Reply(200, headers, raw)


def _referrer(doc: Manifest | Index, raw: bytes, digest: str, media_type: str) -> Referrer:
    """The descriptor the referrers API lists for ``doc`` (spec "Listing Referrers")."""
    artifact: str | None
    if isinstance(doc, Manifest):
        artifact = doc.artifact_type or doc.config.media_type
    else:
        value = json.loads(raw).get("artifactType")
        artifact = value if isinstance(value, str) and value else None
    return Referrer(digest, media_type, len(raw), artifact, dict(doc.annotations))


async def put_manifest(reg: Registry, rq: Rq) -> Reply:
    ref = rq.arg
    tag: str | None = None
    if is_digest_ref(ref):
        want: Digest | None = parse_digest(ref)
    else:
        want = None
        if not TAG.fullmatch(ref):
            raise RegistryHTTPError(400, "MANIFEST_INVALID", f"invalid tag {ref[:150]!r}",
                                    {"tag": ref[:150]})
        tag = ref
    limit = reg.cfg.limits.max_manifest_bytes
    length = rq.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RegistryHTTPError(413, "SIZE_INVALID",
                                f"manifest of {length} bytes is over the {limit}-byte limit")
    raw = await rq.read(limit)
    if raw is None:
        raise RegistryHTTPError(413, "SIZE_INVALID", f"manifest over the {limit}-byte limit")
    digest = Digest.from_bytes(raw, want.algorithm if want else "sha256")
    if want is not None and digest != want:
        raise digest_invalid(f"manifest has digest {digest}, not {want}", str(want))
    ctype = _content_type(rq)
    try:
        doc = parse(raw, ctype if ctype in KNOWN_TYPES else None, what="manifest")
    except LaminaError as e:
        raise RegistryHTTPError(400, "MANIFEST_INVALID", str(e)[:500]) from None
    media_type = doc.media_type
    key = str(digest)
    children = doc.blobs() if isinstance(doc, Manifest) else list(doc.manifests)
    child_keys = [str(d.digest) for d in children]
    referrer = _referrer(doc, raw, key, media_type) if doc.subject is not None else None

    def record() -> None:
        # Protect first, then look (store/gc.py): nothing checked here can be collected
        # before the image record that names it exists.
        reg.lease.protect([key, *child_keys])
        if isinstance(doc, Manifest):
            have = reg.state.links(rq.repo, child_keys) | reg.state.members(rq.repo, child_keys)
        else:
            have = reg.state.members(rq.repo, child_keys)
        # a manifest's children are blobs (the blob storage's), an index's manifests
        holds = reg.blobstore.has if isinstance(doc, Manifest) else reg.manifest_blobs.has
        for d in children:
            if d.urls and not holds(d.digest):
                continue        # a foreign layer: served from its URLs, not from here
            if str(d.digest) not in have or not holds(d.digest):
                what = "blob" if isinstance(doc, Manifest) else "manifest"
                raise RegistryHTTPError(400, "MANIFEST_BLOB_UNKNOWN",
                                        f"{what} {d.digest} is not in repository {rq.name}",
                                        {"digest": str(d.digest)})
        if not reg.manifest_blobs.has(digest):
            reg.manifest_blobs.put_bytes(digest, raw)
        links = child_keys if isinstance(doc, Manifest) else []
        # One transaction: record, tag, membership, links, referrer and layer diff_ids
        # are all committed or none (a database lost half-way leaves nothing behind).
        reg.state.add_manifest(rq.repo, key, media_type, len(raw), child_keys, links,
                               store_tag(rq.repo, tag) if tag else None,
                               str(doc.subject.digest) if doc.subject else None, referrer,
                               layers=layer_rows(reg, doc) if isinstance(doc, Manifest)
                               else ())

    async with reg.manifest_lock:
        await anyio.to_thread.run_sync(record)
    reg.remember_manifest(key, raw)
    headers = {"location": f"/v2/{rq.name}/manifests/{digest}", "docker-content-digest": key}
    if doc.subject is not None:
        headers["oci-subject"] = str(doc.subject.digest)
    return Reply(201, headers)


def layer_rows(reg: Registry, doc: Manifest) -> list[tuple[str, str, str, int]]:
    """Each layer's (digest, diff_id, media type, size), from the config when it is an
    image config we hold (as ``StoreTransport._record_layers``): what dedup and
    unpacking look layers up by."""
    if doc.config.media_type not in mt.CONFIGS:
        return []
    raw = reg.blobstore.read_bytes(doc.config.digest, max(doc.config.size, 0))
    if raw is None:
        return []
    try:
        config = parse_config(raw)
    except LaminaError:
        return []   # a registry stores what it is given; an odd config is not our business
    return [(str(layer.digest), str(diff_id), layer.media_type, layer.size)
            for layer, diff_id in zip(doc.layers, config.diff_ids, strict=False)]


async def delete_manifest(reg: Registry, rq: Rq) -> Reply:
    ref = rq.arg
    if not is_digest_ref(ref):
        if not TAG.fullmatch(ref):
            raise manifest_unknown(ref[:150])
        name = store_tag(rq.repo, ref)
        if not await anyio.to_thread.run_sync(reg.state.delete_tag, name):
            raise manifest_unknown(ref)
        return Reply(202)
    digest = str(parse_digest(ref))
    await reg.adopt_repo(rq.repo)

    async with reg.manifest_lock:
        held = await anyio.to_thread.run_sync(reg.state.remove_manifest, rq.repo, digest)
    if not held:
        raise manifest_unknown(ref)
    return Reply(202)


def adopt(reg: Registry, repo: str, digest: str, media_type: str, depth: int = 0) -> None:
    """Give a manifest the store got some other way (build, load, pull) membership and
    links in ``repo``, and its index children too (blocking)."""
    if depth > 8:
        return
    try:
        raw = reg.store.blobs.read_bytes(Digest.parse(digest))
        doc = parse(raw, media_type if media_type in KNOWN_TYPES else None)
    except (NotFound, InvalidManifest, LaminaError):
        return
    links: list[str] = []
    if isinstance(doc, Manifest):
        links = [str(d.digest) for d in doc.blobs()]
    else:
        for child in doc.manifests:
            if reg.store.blobs.has(child.digest) and child.media_type in KNOWN_TYPES:
                adopt(reg, repo, str(child.digest), child.media_type, depth + 1)
    referrer = _referrer(doc, raw, digest, doc.media_type) if doc.subject else None
    reg.state.add_manifest(repo, digest, doc.media_type, len(raw), None, links, None,
                           str(doc.subject.digest) if doc.subject else None, referrer)


