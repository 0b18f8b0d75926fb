"""Content management and the store underneath: deletes (tag, manifest, blob), pushes
recorded as store images (gc roots), blobs stored once across repositories, images the
CLI made served and adopted, gc while a push is in flight, concurrent pushes sharing
layers, upload sessions surviving a restart and expiring."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    digest_of,
    error_code,
    make_image,
    push_blob,
    push_image,
    push_manifest,
    random_bytes,
)

from lamina.image.reference import Reference
from lamina.server import Registry, ServerConfig, create_app
from lamina.server.config import Limits
from lamina.store import Store, collect

pytestmark = pytest.mark.anyio


def blob_files(store: Store) -> set[str]:
    return {str(d) for d in store.blobs.list()}


async def test_delete_tag_manifest_blob(client: httpx.AsyncClient, store: Store) -> None:
    repo = "mgmt/a"
    image = make_image(1)
    digest = await push_image(client, repo, "tagtest0", image)
    await push_manifest(client, repo, "other", image.manifest)
    r = await client.get(f"/v2/{repo}/tags/list")
    assert r.json()["tags"] == ["other", "tagtest0"]
    r = await client.delete(f"/v2/{repo}/manifests/tagtest0")
    assert r.status_code == 202
    assert (await client.get(f"/v2/{repo}/manifests/tagtest0")).status_code == 404
    assert (await client.get(f"/v2/{repo}/manifests/{digest}")).status_code == 200
    assert (await client.delete(f"/v2/{repo}/manifests/tagtest0")).status_code == 404
    r = await client.delete(f"/v2/{repo}/manifests/{digest}")
    assert r.status_code == 202
    r = await client.get(f"/v2/{repo}/manifests/{digest}")
    assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"
    assert (await client.get(f"/v2/{repo}/manifests/other")).status_code == 404  # its tags go
    assert (await client.get(f"/v2/{repo}/tags/list")).json()["tags"] == []
    assert (await client.delete(f"/v2/{repo}/manifests/{digest}")).status_code == 404
    assert store.meta.get_image(digest) is None
    cfg = digest_of(image.config)
    assert (await client.delete(f"/v2/{repo}/blobs/{cfg}")).status_code == 202
    r = await client.get(f"/v2/{repo}/blobs/{cfg}")
    assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"
    r = await client.delete(f"/v2/{repo}/blobs/{cfg}")
    assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"
    # nothing holds the image now: gc frees its blobs once the lease has lapsed
    collect(store)
    assert cfg in blob_files(store)            # still leased (the push is recent)
    store.meta._db.execute("UPDATE leases SET expires = 0")
    collect(store)
    assert not blob_files(store) & {cfg, digest, *(digest_of(b) for b in image.layers)}


async def test_push_is_a_store_image(client: httpx.AsyncClient, store: Store) -> None:
    a, b = make_image(2, n_layers=3), make_image(2, n_layers=3)
    b.layers[2] = random_bytes(3000, 999)       # B shares A's first two layers
    b.config = b.config.replace(b"image-2", b"image-b")
    da = await push_image(client, "demo/a", "latest", a)
    db = await push_image(client, "demo/b", "v1", b)
    dd = await push_image(client, "demo/c", a.digest, a)   # by digest only: untagged
    assert dd == da
    tags = {t.name: t.digest for t in store.meta.tags()}
    assert tags == {"docker.io/demo/a:latest": da, "docker.io/demo/b:v1": db}
    assert Reference.parse("demo/a").familiar == "demo/a:latest"
    rec = store.meta.get_image(da)
    assert rec is not None and rec.media_type == OCI_MANIFEST
    assert set(store.meta.children(da)) == {digest_of(x) for x in a.blobs()}
    # six distinct layers pushed... four on disk: shared layers are stored once
    layers = {digest_of(x) for x in a.layers + b.layers}
    assert len(layers) == 4 and layers <= blob_files(store)
    # deleting A from demo/a keeps the image: demo/c still holds it by digest
    assert (await client.delete(f"/v2/demo/a/manifests/{da}")).status_code == 202
    assert store.meta.get_image(da) is not None
    assert (await client.delete(f"/v2/demo/c/manifests/{da}")).status_code == 202
    assert store.meta.get_image(da) is None


async def test_serves_what_the_cli_made(client: httpx.AsyncClient, store: Store,
                                        tmp_path: Path) -> None:
    from lamina.build.importer import ImportOptions, import_snapshots

    snap = tmp_path / "snap"
    (snap / "etc").mkdir(parents=True)
    (snap / "etc" / "hello").write_text("hello\n")
    result = import_snapshots(store, "demo/built", [snap], ImportOptions(source_date_epoch=0))
    digest = str(result.manifest.digest)
    r = await client.get("/v2/demo/built/manifests/latest")
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest
    for d in (result.config, *result.layers):
        r = await client.get(f"/v2/demo/built/blobs/{d.digest}")
        assert r.status_code == 200 and digest_of(r.content) == str(d.digest)
    assert "demo/built" in (await client.get("/v2/_catalog")).json()["repositories"]
    assert (await client.get("/v2/demo/built/tags/list")).json()["tags"] == ["latest"]
    # not visible from another repository
    cfg = result.config.digest
    assert (await client.get(f"/v2/demo/other/blobs/{cfg}")).status_code == 404
    # an index the CLI stored: its children are members too
    idx = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": result.manifest.size}]}
    ).encode()
    d_idx = store.blobs.put_bytes(idx)
    store.meta.add_image(str(d_idx), OCI_INDEX, len(idx), [digest], "docker.io/demo/idx:1")
    r = await client.get("/v2/demo/idx/manifests/1")
    assert r.status_code == 200 and r.headers["content-type"] == OCI_INDEX
    assert (await client.get(f"/v2/demo/idx/manifests/{digest}")).status_code == 200


async def test_gc_during_push(client: httpx.AsyncClient, store: Store) -> None:
    """Blobs uploaded, then gc (another process's store handle) runs before the manifest
    arrives: nothing is lost, the manifest is accepted, everything pulls."""
    image = make_image(3, n_layers=3)
    for b in image.blobs()[:-1]:
        await push_blob(client, "gc/a", b)
    r = await client.post("/v2/gc/a/blobs/uploads/")
    loc = r.headers["location"]
    await client.patch(loc, content=image.layers[-1][:1000])
    with Store(store.root) as other:        # what `lamina gc` in another process does
        report = collect(other)
    assert not report.blobs_removed and not report.ingest_removed
    r = await client.put(loc, params={"digest": digest_of(image.layers[-1])},
                         content=image.layers[-1][1000:])
    assert r.status_code == 201
    with Store(store.root) as other:
        collect(other)
    r = await push_manifest(client, "gc/a", "latest", image.manifest)
    assert r.status_code == 201, r.text
    with Store(store.root) as other:
        other.meta._db.execute("UPDATE leases SET expires = 0")
        collect(other)      # leases gone: the image record alone keeps it all
    for b in image.blobs():
        got = await client.get(f"/v2/gc/a/blobs/{digest_of(b)}")
        assert got.status_code == 200 and got.content == b


async def test_concurrent_pushes_share_layers(client: httpx.AsyncClient,
                                              store: Store) -> None:
    base = [random_bytes(200_000, 70 + i) for i in range(3)]
    images = []
    for i in range(6):
        im = make_image(40 + i, n_layers=1)
        im.layers = [*base, im.layers[0]]
        images.append(im)

    async def one(i: int) -> str:
        return await push_image(client, f"conc/r{i}", "latest", images[i])

    digests = await asyncio.gather(*(one(i) for i in range(6)))
    assert len(set(digests)) == 6
    for i, im in enumerate(images):
        for b in im.blobs():
            r = await client.get(f"/v2/conc/r{i}/blobs/{digest_of(b)}")
            assert r.content == b
    assert {digest_of(b) for b in base} <= blob_files(store)
    assert not os.listdir(store.blobs.ingest_dir)


async def test_session_survives_restart(store: Store) -> None:
    blob = random_bytes(100_000, 5)
    app1 = create_app(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app1),
                                 base_url="http://r") as c:
        r = await c.post("/v2/up/a/blobs/uploads/")
        loc = r.headers["location"]
        r = await c.patch(loc, content=blob[:60_000], headers={"Content-Range": "0-59999"})
        assert r.status_code == 202
    await app1.shutdown()             # the process goes; its writer's file stays
    app2 = create_app(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app2),
                                 base_url="http://r") as c:
        r = await c.get(loc)
        assert r.status_code == 204 and r.headers["range"] == "0-59999"
        r = await c.put(loc, params={"digest": digest_of(blob)}, content=blob[60_000:],
                        headers={"Content-Range": "60000-99999"})
        assert r.status_code == 201, r.text
        assert (await c.get(f"/v2/up/a/blobs/{digest_of(blob)}")).content == blob
    app2.state.close()
    assert not os.listdir(store.blobs.ingest_dir)


async def test_sessions_expire(store: Store) -> None:
    app = create_app(store, ServerConfig(limits=Limits(upload_ttl=1.0)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://r") as c:
        r = await c.post("/v2/up/b/blobs/uploads/")
        loc = r.headers["location"]
        await c.patch(loc, content=b"partial")
        r2 = await c.post("/v2/up/b/blobs/uploads/")
        time.sleep(1.2)
        assert await app.uploads.expire() == 2
        r = await c.get(loc)
        assert r.status_code == 404 and error_code(r) == "BLOB_UPLOAD_UNKNOWN"
        assert (await c.get(r2.headers["location"])).status_code == 404
    app.state.close()
    assert not os.listdir(store.blobs.ingest_dir)




async def test_client_gone_mid_chunk_resumes(app: tuple[Registry, httpx.AsyncClient]
                                             ) -> None:
    """A PATCH cut off by the client keeps what arrived; GET says where to resume."""
    registry, c = app
    blob = random_bytes(300_000, 8)
    r = await c.post("/v2/cut/a/blobs/uploads/")
    loc = r.headers["location"]
    messages = [{"type": "http.request", "body": blob[:100_000], "more_body": True},
                {"type": "http.disconnect"}]
    scope = {"type": "http", "method": "PATCH", "path": loc, "raw_path": loc.encode(),
             "query_string": b"", "headers": [(b"content-range", b"0-299999")],
             "client": ("127.0.0.1", 1)}

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        pass

    await registry(scope, receive, send)
    r = await c.get(loc)
    assert r.status_code == 204 and r.headers["range"] == "0-99999"
    r = await c.put(loc, params={"digest": digest_of(blob)}, content=blob[100_000:],
                    headers={"Content-Range": "100000-299999"})
    assert r.status_code == 201
    assert (await c.get(f"/v2/cut/a/blobs/{digest_of(blob)}")).content == blob
