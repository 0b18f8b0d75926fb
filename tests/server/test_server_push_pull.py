"""The conformance suite's pull and push workflows, in-process, for sha256 and sha512:
monolithic (POST+PUT, single POST), chunked (416 out of order and on retry, status,
closing PUT with or without the last chunk), streamed PATCH, cancel, mounts, ranged
GETs, manifests by tag and digest, OCI and Docker types."""

from __future__ import annotations

import json

import httpx
import pytest
from server_helpers import (
    ALGORITHMS,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    config_blob,
    descriptor,
    digest_of,
    error_code,
    make_image,
    push_blob,
    push_image,
    push_manifest,
    random_bytes,
)

pytestmark = pytest.mark.anyio
REPLICA_PAIR = True      # conftest: each test also runs on two replicas over PostgreSQL
DUMMY = digest_of(b"hello world")


async def test_base(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert (await client.get("/v2")).status_code == 200
    r = await client.post("/v2/")
    assert r.status_code == 405 and error_code(r) == "UNSUPPORTED"


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_monolithic_uploads(client: httpx.AsyncClient, alg: str) -> None:
    repo = "conf/push"
    blob = random_bytes(5000, 1)
    d = digest_of(blob, alg)
    r = await client.get(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"
    # single POST
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": d}, content=blob,
                          headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/{repo}/blobs/{d}"
    assert r.headers["docker-content-digest"] == d
    r = await client.get(r.headers["location"])
    assert r.status_code == 200 and r.content == blob
    assert r.headers["docker-content-digest"] == d
    # POST then PUT
    other = random_bytes(3000, 2)
    r = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["location"].startswith(f"/v2/{repo}/blobs/uploads/")
    r = await client.put(r.headers["location"], params={"digest": digest_of(other, alg)},
                         content=other)
    assert r.status_code == 201
    r = await client.head(f"/v2/{repo}/blobs/{digest_of(other, alg)}")
    assert r.status_code == 200 and r.headers["content-length"] == "3000" and not r.content
    # an empty blob is a blob
    empty = digest_of(b"", alg)
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": empty}, content=b"")
    assert r.status_code == 201
    assert (await client.get(f"/v2/{repo}/blobs/{empty}")).content == b""


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_chunked_upload(client: httpx.AsyncClient, alg: str) -> None:
    repo = "conf/chunked"
    blob = random_bytes(42, 3)
    c1, c2 = blob[:22], blob[22:]
    r = await client.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202
    assert int(r.headers["oci-chunk-min-length"]) > 0      # advertised, not enforced
    # out of order: 416, and the Range says where the upload stands
    r = await client.patch(r.headers["location"], content=c2,
                           headers={"Content-Range": "22-41", "Content-Type":
                                    "application/octet-stream"})
    assert r.status_code == 416 and error_code(r) == "BLOB_UPLOAD_INVALID"
    assert r.headers["range"] == "0-0"
    r = await client.post(f"/v2/{repo}/blobs/uploads/")
    first = r.headers["location"]
    r = await client.patch(first, content=c1, headers={"Content-Range": "0-21"})
    assert r.status_code == 202 and r.headers["range"] == "0-21"
    assert r.headers["location"]
    # retrying the same chunk is out of order now
    r = await client.patch(first, content=c1, headers={"Content-Range": "0-21"})
    assert r.status_code == 416
    r = await client.get(first)
    assert r.status_code == 204 and r.headers["range"] == "0-21" and r.headers["location"]
    r = await client.patch(r.headers["location"], content=c2,
                           headers={"Content-Range": "22-41", "Content-Length": "20"})
    assert r.status_code == 202 and r.headers["range"] == "0-41"
    r = await client.put(r.headers["location"], params={"digest": digest_of(blob, alg)},
                         headers={"Content-Length": "0"})
    assert r.status_code == 201 and r.headers["location"]
    assert (await client.get(f"/v2/{repo}/blobs/{digest_of(blob, alg)}")).content == blob


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_last_chunk_with_put_and_streamed_patch(client: httpx.AsyncClient,
                                                      alg: str) -> None:
    repo = "conf/stream"
    blob = random_bytes(3 << 20, 4)    # several server-side writes
    r = await client.post(f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["location"]

    async def gen() -> object:
        for i in range(0, 2 << 20, 65536):
            yield blob[i:i + 65536]

    r = await client.patch(loc, content=gen())          # streamed: no Content-Range
    assert r.status_code == 202 and r.headers["range"] == f"0-{(2 << 20) - 1}"
    r = await client.put(r.headers["location"], params={"digest": digest_of(blob, alg)},
                         content=blob[2 << 20:],
                         headers={"Content-Range": f"{2 << 20}-{len(blob) - 1}"})
    assert r.status_code == 201, r.text
    got = await client.get(f"/v2/{repo}/blobs/{digest_of(blob, alg)}")
    assert got.content == blob


async def test_cancel_and_bad_digest(client: httpx.AsyncClient) -> None:
    repo = "conf/cancel"
    r = await client.post(f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["location"]
    r = await client.patch(loc, content=b"abc")
    assert r.status_code == 202
    assert (await client.delete(loc)).status_code == 204
    r = await client.get(loc)
    assert r.status_code == 404 and error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    r = await client.patch(loc, content=b"abc")
    assert r.status_code == 404 and error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    # content that is not what the digest says: DIGEST_INVALID, nothing stored
    r = await client.post(f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["location"]
    r = await client.put(loc, params={"digest": digest_of(b"other")}, content=b"this")
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    assert (await client.get(loc)).status_code == 404
    assert (await client.head(f"/v2/{repo}/blobs/{digest_of(b'other')}")).status_code == 404
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(b"x")},
                          content=b"y")
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    # a closing PUT without ?digest=
    r = await client.post(f"/v2/{repo}/blobs/uploads/")
    r = await client.put(r.headers["location"], content=b"abc")
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"


async def test_ranges(client: httpx.AsyncClient) -> None:
    repo = "conf/range"
    blob = random_bytes(10000, 5)
    d = digest_of(blob)
    await push_blob(client, repo, blob)
    r = await client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == blob[100:200]
    assert r.headers["content-range"] == "bytes 100-199/10000"
    r = await client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=9000-"})
    assert r.status_code == 206 and r.content == blob[9000:]
    r = await client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == blob[-10:]
    r = await client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=9990-20000"})
    assert r.status_code == 206 and r.content == blob[9990:]
    r = await client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=10000-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */10000"
    r = await client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "lines=1-2"})
    assert r.status_code == 200 and r.content == blob


async def test_mounts(client: httpx.AsyncClient) -> None:
    blob = random_bytes(2000, 6)
    d = digest_of(blob)
    await push_blob(client, "conf/origin", blob)
    # without from, a digest nobody has: an ordinary session
    r = await client.post("/v2/conf/mounted/blobs/uploads/", params={"mount": DUMMY})
    assert r.status_code == 202 and r.headers["location"].startswith(
        "/v2/conf/mounted/blobs/uploads/")
    assert (await client.head(f"/v2/conf/mounted/blobs/{d}")).status_code == 404
    r = await client.post("/v2/conf/mounted/blobs/uploads/",
                          params={"mount": d, "from": "conf/origin"})
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/conf/mounted/blobs/{d}"
    assert (await client.get(r.headers["location"])).content == blob
    # from a repository that lacks it, or a name that is not one: upload instead
    for origin in ("conf/empty", "NOT..A..NAME"):
        r = await client.post("/v2/conf/m2/blobs/uploads/", params={"mount": d, "from": origin})
        assert r.status_code == 202
    # from is optional: found elsewhere, mounted
    r = await client.post("/v2/conf/m3/blobs/uploads/", params={"mount": d})
    assert r.status_code == 201


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_manifests(client: httpx.AsyncClient, alg: str) -> None:
    repo = "conf/manifests"
    image = make_image(7, algorithm=alg)
    for b in image.blobs():
        await push_blob(client, repo, b, alg)
    r = await client.get(f"/v2/{repo}/manifests/.INVALID_MANIFEST_NAME")
    assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"
    for i in range(4):
        r = await push_manifest(client, repo, f"test{i}", image.manifest)
        assert r.status_code == 201, r.text
        assert r.headers["location"]
    digest = digest_of(image.manifest)     # pushed by tag: the canonical sha256
    assert r.headers["docker-content-digest"] == digest
    r = await push_manifest(client, repo, image.digest, image.manifest)
    assert r.status_code == 201 and r.headers["docker-content-digest"] == image.digest
    for ref in ("test0", digest, image.digest):
        r = await client.get(f"/v2/{repo}/manifests/{ref}",
                             headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == image.manifest
        assert r.headers["content-type"] == OCI_MANIFEST
        h = await client.head(f"/v2/{repo}/manifests/{ref}")
        assert h.status_code == 200 and h.headers["content-length"] == str(len(image.manifest))
        assert h.headers["docker-content-digest"] == (image.digest if ref == image.digest
                                                      else digest)
    # a manifest with no layers, with no mediaType field (Content-Type says it)
    empty = Image(config_blob("empty"), [], alg)
    await push_blob(client, repo, empty.config, alg)
    raw = json.dumps({"schemaVersion": 2, "config": descriptor(
        "application/vnd.oci.image.config.v1+json", empty.config, alg), "layers": []}).encode()
    r = await push_manifest(client, repo, "emptylayer", raw)
    assert r.status_code == 201, r.text
    # a manifest is a blob of its repository too
    assert (await client.get(f"/v2/{repo}/blobs/{digest}")).content == image.manifest


async def test_manifest_refusals(client: httpx.AsyncClient) -> None:
    repo = "conf/refuse"
    image = make_image(8)
    r = await push_manifest(client, repo, "latest", image.manifest)
    assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    assert r.json()["errors"][0]["detail"]["digest"] == digest_of(image.config)
    for b in image.blobs():
        await push_blob(client, repo, b)
    r = await push_manifest(client, repo, digest_of(b"not it"), image.manifest)
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    r = await push_manifest(client, repo, "sha256:totallywrong", b"blablabla")
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    r = await push_manifest(client, repo, "latest", b"blablabla")
    assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID"
    r = await push_manifest(client, repo, "-bad-tag", image.manifest)
    assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID"
    # declared type and Content-Type disagree
    r = await push_manifest(client, repo, "latest", image.manifest, DOCKER_MANIFEST)
    assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID"
    # a blob in the store but not linked to this repository is unknown here
    other = make_image(9)
    for b in other.blobs():
        await push_blob(client, "conf/elsewhere", b)
    r = await push_manifest(client, repo, "latest", other.manifest)
    assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    assert (await client.get(f"/v2/{repo}/manifests/latest")).status_code == 404


async def test_docker_types_and_indexes(client: httpx.AsyncClient) -> None:
    repo = "conf/multi"
    amd = make_image(10, media_type=DOCKER_MANIFEST)
    arm = make_image(11, media_type=DOCKER_MANIFEST)
    for im in (amd, arm):
        d = await push_image(client, repo, im.digest, im)
        r = await client.get(f"/v2/{repo}/manifests/{d}")
        assert r.headers["content-type"] == DOCKER_MANIFEST
    entries = [descriptor(DOCKER_MANIFEST, im.manifest, platform={"os": "linux",
               "architecture": a}) for im, a in ((amd, "amd64"), (arm, "arm64"))]
    lst = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST,
                      "manifests": entries}).encode()
    r = await push_manifest(client, repo, "latest", lst, DOCKER_LIST)
    assert r.status_code == 201, r.text
    r = await client.get(f"/v2/{repo}/manifests/latest")
    assert r.headers["content-type"] == DOCKER_LIST and r.content == lst
    # an index naming a manifest the repository lacks
    missing = make_image(12)
    idx = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, missing.manifest)]}).encode()
    r = await push_manifest(client, repo, "broken", idx, OCI_INDEX)
    assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    # schema 1 is refused as invalid
    r = await push_manifest(client, repo, "old", json.dumps(
        {"schemaVersion": 1, "name": repo, "tag": "old", "fsLayers": []}).encode(),
        "application/vnd.docker.distribution.manifest.v1+prettyjws")
    assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID"
