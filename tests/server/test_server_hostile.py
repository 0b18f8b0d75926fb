"""Hostile names, digests and bodies, and the limits: nothing reaches the filesystem but
digests, every refusal is the spec's error with the right status."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest
from server_helpers import digest_of, error_code, make_image, push_blob, push_image

from lamina.server import Registry, ServerConfig
from lamina.server.config import Limits
from lamina.store import Store

pytestmark = pytest.mark.anyio
D = digest_of(b"x")


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", [
    "UPPER/case", "a//b", "a/../b", "../../etc", "a/./b", "-a/b", "a-/b", "a/b/", "a..b",
    "a" * 250, "a/" * 130 + "a", "naïve", "a b", "a%2Fb", "\x00a", ".hidden",
])
async def test_hostile_names(app: tuple[Registry, httpx.AsyncClient], store: Store,
                             name: str) -> None:
    before = tree(store.root)
    for method, path in (("GET", f"/v2/{name}/manifests/latest"),
                         ("PUT", f"/v2/{name}/manifests/latest"),
                         ("GET", f"/v2/{name}/blobs/{D}"),
                         ("POST", f"/v2/{name}/blobs/uploads/"),
                         ("GET", f"/v2/{name}/tags/list")):
        status, body = await raw_request(app[0], method, path, b"{}")
        assert status in (400, 404), (method, path, status)
        if status == 400:
            assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
    assert tree(store.root) == before


async def raw_request(app: Registry, method: str, path: str, body: bytes = b""
                      ) -> tuple[int, bytes]:
    """Call the ASGI app with ``path`` exactly as given (an HTTP client would normalise
    dot segments away before the server ever saw them)."""
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "http_version": "1.1", "scheme": "http"}
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    out: dict[str, object] = {"body": b""}

    async def receive() -> dict[str, object]:
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] = bytes(out["body"]) + bytes(message.get("body", b""))  # type: ignore

    await app(scope, receive, send)
    return int(out["status"]), bytes(out["body"])  # type: ignore[call-overload]


@pytest.mark.parametrize("digest", [
    "sha256:xyz", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:" + "a" * 63,
    "sha256:" + "A" * 64, "sha512:" + "a" * 64, "sha256:" + "a" * 64 + "/../x",
    "sha256", ":" + "a" * 64, "sha256:..%2F..%2Fetc%2Fpasswd",
])
async def test_hostile_digests(client: httpx.AsyncClient, digest: str) -> None:
    for method, path in (("GET", f"/v2/h/a/blobs/{digest}"),
                         ("DELETE", f"/v2/h/a/blobs/{digest}"),
                         ("GET", f"/v2/h/a/referrers/{digest}")):
        r = await client.request(method, path)
        assert r.status_code in (400, 404), (method, path, r.status_code)
        if r.status_code == 400:
            assert error_code(r) == "DIGEST_INVALID"
    r = await client.post("/v2/h/a/blobs/uploads/", params={"digest": digest}, content=b"x")
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    r = await client.get(f"/v2/h/a/manifests/{digest}")
    assert r.status_code in (400, 404)


async def test_hostile_upload_ids(client: httpx.AsyncClient) -> None:
    for uuid in ("not-a-uuid", "00000000-0000-0000-0000-000000000000", "x" * 500, "%2e%2e"):
        r = await client.patch(f"/v2/h/a/blobs/uploads/{uuid}", content=b"x")
        assert r.status_code == 404 and error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    # a session belongs to its repository
    r = await client.post("/v2/h/a/blobs/uploads/")
    uuid = r.headers["location"].rsplit("/", 1)[1]
    r = await client.patch(f"/v2/h/other/blobs/uploads/{uuid}", content=b"x")
    assert r.status_code == 404


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b'"str"', b"{", b"\xff\xfe", b"[" * 100000, b'{"schemaVersion": 2}',
    b'{"schemaVersion": 2, "config": 5, "layers": []}',
    b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
    b' "config": {"mediaType": "x", "digest": "sha256:../../etc", "size": 1}, "layers": []}',
    b'{"schemaVersion": 2, "mediaType": "text/plain", "config": {}, "layers": []}',
])
async def test_hostile_manifests(client: httpx.AsyncClient, body: bytes) -> None:
    r = await client.put("/v2/h/m/manifests/latest", content=body,
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID", r.text


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/h/b/blobs/uploads/")
    loc = r.headers["location"]
    for rng in ("abc", "5-2", "bytes=x-y"):
        r = await client.patch(loc, content=b"abcd", headers={"Content-Range": rng})
        assert r.status_code == 400 and error_code(r) == "BLOB_UPLOAD_INVALID", rng
    r = await client.patch(loc, content=b"abcd", headers={"Content-Range": "0-9"})
    assert r.status_code == 400 and error_code(r) == "SIZE_INVALID"   # refused up front
    assert (await client.get(loc)).headers["range"] == "0-0"

    async def short() -> object:
        yield b"abcd"

    r = await client.patch(loc, content=short(), headers={"Content-Range": "0-9"})
    assert r.status_code == 400      # a streamed body shorter than its range: spoilt
    assert (await client.get(loc)).status_code == 404
    assert (await client.request("PATCH", "/v2/h/b/manifests/x")).status_code == 405
    r = await client.get("/nothing/here")
    assert r.status_code == 404
    r = await client.get("/v2/h/b/unknown/thing")
    assert r.status_code == 404


async def test_concurrent_chunks_on_one_session(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/h/c/blobs/uploads/")
    loc = r.headers["location"]
    a, b = await asyncio.gather(
        client.patch(loc, content=b"a" * 1000, headers={"Content-Range": "0-999"}),
        client.patch(loc, content=b"b" * 1000, headers={"Content-Range": "0-999"}))
    assert sorted([a.status_code, b.status_code]) == [202, 416]


async def test_limits(make_client: object, store: Store) -> None:
    cfg = ServerConfig(limits=Limits(max_manifest_bytes=2000, max_blob_bytes=10_000))
    _, c = make_client(cfg)  # type: ignore[operator]
    async with c:
        image = make_image(1, n_layers=40, size=10)
        assert len(image.manifest) > 2000
        for b in image.blobs():
            await push_blob(c, "lim/a", b)
        r = await c.put("/v2/lim/a/manifests/latest", content=image.manifest)
        assert r.status_code == 413 and error_code(r) == "SIZE_INVALID"
        r = await c.post("/v2/lim/a/blobs/uploads/", params={"digest": D},
                         content=b"x" * 10_001)
        assert r.status_code == 413 and error_code(r) == "SIZE_INVALID"
        r = await c.post("/v2/lim/a/blobs/uploads/")
        loc = r.headers["location"]
        await c.patch(loc, content=b"x" * 9000)

        async def body() -> object:
            yield b"y" * 900
            yield b"y" * 900

        r = await c.patch(loc, content=body())     # streamed past the limit
        assert r.status_code == 413 and error_code(r) == "SIZE_INVALID"
        assert not os.listdir(store.blobs.ingest_dir)


async def test_rate_limit(make_client: object) -> None:
    _, c = make_client(ServerConfig(limits=Limits(rate=0.5, burst=10)))  # type: ignore[operator]
    async with c:
        # a burst, then TOOMANYREQUESTS with Retry-After
        codes = [(await c.get("/v2/")).status_code for _ in range(20)]
        assert codes[:10] == [200] * 10
        assert 429 in codes
        r = await c.get("/v2/")
        assert r.status_code == 429 and error_code(r) == "TOOMANYREQUESTS"
        assert int(r.headers["retry-after"]) >= 1


async def test_small_image_still_fits(client: httpx.AsyncClient) -> None:
    image = make_image(2, n_layers=1)
    await push_image(client, "h/ok", "latest", image)
    assert (await client.get("/v2/h/ok/manifests/latest")).status_code == 200
