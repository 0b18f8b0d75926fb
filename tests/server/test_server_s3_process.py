"""``lamina serve`` processes on S3 storage (a real Ceph RADOS Gateway), with real
clients: lamina and skopeo push and pull; one upload's PATCHes alternating between two
processes on the same bucket and store; redirects followed by skopeo and lamina; the
gateway stopped (503, one log line, nothing half-committed) and back (service resumes by
itself, one log line); a digest mismatch leaving no object at the digest key."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from s3_fixture import bucket_keys, s3_client, storage_toml
from server_helpers import Serve, digest_of, random_bytes, skopeo
from test_server_process import (  # noqa: F401 - fixtures and helpers
    TLS_OFF,
    _htpasswd,
    _private_auth,
    copy_store,
    seeded,
)
from test_server_replica_processes import seed_across_replicas

from ceph_s3 import Ceph, Gateway, free_port
from lamina.server.config import StorageConfig
from lamina_testing import Lamina

MiB = 1024 * 1024


def key_of(digest: str) -> str:
    alg, hexd = digest.split(":")
    return f"blobs/{alg}/{hexd[:2]}/{hexd}"


@pytest.fixture
def s3_serve(tmp_path: Path, s3_storage: StorageConfig) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(root: str = "served", storage: StorageConfig | None = None,
              **extra: Any) -> Serve:
        n = len(started)
        cfg = tmp_path / f"serve-{n}.toml"
        cfg.write_text(storage_toml(storage or s3_storage, **extra))
        srv = Serve(tmp_path / root, tmp_path / f"serve-{n}.log", "--config", str(cfg))
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()


def blob_digests(host: str, repo: str) -> set[str]:
    """The config and layers (the manifest stays with the SQLite metadata)."""
    raw = json.loads(skopeo("inspect", "--raw", *TLS_OFF, f"docker://{host}/{repo}").stdout)
    return {raw["config"]["digest"], *(layer["digest"] for layer in raw["layers"])}


def test_lamina_and_skopeo_through_s3(s3_serve: Callable[..., Serve],
                                      seeded: Path,  # noqa: F811 - the fixture
                                      tmp_path: Path, s3_gateway: Gateway,
                                      s3_storage: StorageConfig) -> None:
    srv = s3_serve()
    lam = copy_store(seeded, tmp_path / "src")
    for name in ("a", "b"):
        lam.run("tag", f"demo/{name}", f"{srv.host}/demo/{name}")
    assert lam.run("push", f"{srv.host}/demo/a").out.count("Pushed") == 4
    out_b = lam.run("push", f"{srv.host}/demo/b").out
    assert out_b.count("Mounted from demo/a") == 3, out_b
    # the bucket holds each config and layer once, under its digest, and nothing else
    want = blob_digests(srv.host, "demo/a") | blob_digests(srv.host, "demo/b")
    assert bucket_keys(s3_client(s3_gateway), s3_storage.bucket) == sorted(
        key_of(d) for d in want)
    # skopeo: out to a layout, back in under another name; lamina pulls that
    skopeo("copy", "--src-tls-verify=false", f"docker://{srv.host}/demo/b:latest",
           f"oci:{tmp_path / 'layout'}:b")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:b",
           f"docker://{srv.host}/copies/b:v1")
    dst = Lamina(tmp_path / "dst", tmp_path)
    dst.run("pull", f"{srv.host}/copies/b:v1")
    assert dst.run("inspect", f"{srv.host}/copies/b:v1").json()[0]["Id"] == \
        lam.run("inspect", "demo/b").json()[0]["Id"]
    dst.assert_consistent()


def test_upload_continued_by_another_process(s3_serve: Callable[..., Serve],
                                             s3_gateway: Gateway,
                                             s3_storage: StorageConfig) -> None:
    a = s3_serve("shared", part_size=5 * MiB)
    b = s3_serve("shared", part_size=5 * MiB)
    blob = random_bytes(13 * MiB + 123, 5)
    digest = digest_of(blob)
    chunk = 3 * MiB
    with httpx.Client(timeout=60) as c:
        r = c.post(f"{a.url}/v2/s3/multi/blobs/uploads/")
        assert r.status_code == 202
        path = r.headers["location"]
        for i, start in enumerate(range(0, len(blob), chunk)):
            srv = (a, b)[i % 2]
            part = blob[start:start + chunk]
            r = c.patch(f"{srv.url}{path}", content=part, headers={
                "Content-Range": f"{start}-{start + len(part) - 1}",
                "Content-Type": "application/octet-stream"})
            assert r.status_code == 202, r.text
            assert r.headers["range"] == f"0-{start + len(part) - 1}"
            # the other process knows where it stands
            other = (b, a)[i % 2]
            r = c.get(f"{other.url}{path}")
            assert r.status_code == 204 and r.headers["range"] == f"0-{start + len(part) - 1}"
        # no blob before the closing PUT
        assert c.head(f"{b.url}/v2/s3/multi/blobs/{digest}").status_code == 404
        r = c.put(f"{b.url}{path}", params={"digest": digest})
        assert r.status_code == 201, r.text
        # read back through the process that started it, whole and across a part boundary
        r = c.get(f"{a.url}/v2/s3/multi/blobs/{digest}")
        assert r.status_code == 200 and r.content == blob
        lo, hi = 5 * MiB - 10, 10 * MiB + 10
        r = c.get(f"{a.url}/v2/s3/multi/blobs/{digest}", headers={"Range": f"bytes={lo}-{hi}"})
        assert r.status_code == 206 and r.content == blob[lo:hi + 1]
        assert r.headers["content-range"] == f"bytes {lo}-{hi}/{len(blob)}"
    # the upload's parts and tails are gone; the blob is one object at its digest
    assert bucket_keys(s3_client(s3_gateway), s3_storage.bucket) == [key_of(digest)]
    assert s3_client(s3_gateway).list_multipart_uploads(
        Bucket=s3_storage.bucket).get("Uploads", []) == []


def test_digest_mismatch_leaves_no_object(s3_serve: Callable[..., Serve],
                                          s3_gateway: Gateway,
                                          s3_storage: StorageConfig) -> None:
    srv = s3_serve(part_size=5 * MiB)
    claimed = digest_of(b"something else")
    with httpx.Client(timeout=60) as c:
        for size in (1000, 12 * MiB):       # one PUT, and a multipart upload
            blob = random_bytes(size, size)
            r = c.post(f"{srv.url}/v2/s3/bad/blobs/uploads/")
            path = r.headers["location"]
            r = c.patch(f"{srv.url}{path}", content=blob)
            assert r.status_code == 202
            r = c.put(f"{srv.url}{path}", params={"digest": claimed})
            assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
            assert c.get(f"{srv.url}/v2/s3/bad/blobs/{claimed}").status_code == 404
    assert bucket_keys(s3_client(s3_gateway), s3_storage.bucket) == []
    assert s3_client(s3_gateway).list_multipart_uploads(
        Bucket=s3_storage.bucket).get("Uploads", []) == []


def test_redirect_followed_by_skopeo_and_lamina(s3_serve: Callable[..., Serve],
                                                seeded: Path,  # noqa: F811
                                                tmp_path: Path, s3_gateway: Gateway) -> None:
    srv = s3_serve(redirect=True)
    lam = copy_store(seeded, tmp_path / "src")
    lam.run("tag", "demo/a", f"{srv.host}/demo/a")
    lam.run("push", f"{srv.host}/demo/a")
    config = json.loads(skopeo("inspect", "--raw", *TLS_OFF,
                               f"docker://{srv.host}/demo/a").stdout)["config"]["digest"]
    with httpx.Client(timeout=30) as c:
        r = c.get(f"{srv.url}/v2/demo/a/blobs/{config}")
        assert r.status_code == 307
        assert r.headers["location"].startswith(f"{s3_gateway.endpoint}/")
        got = c.get(r.headers["location"])
        assert got.status_code == 200 and digest_of(got.content) == config
        assert c.head(f"{srv.url}/v2/demo/a/blobs/{config}").status_code == 200
    skopeo("copy", "--src-tls-verify=false", f"docker://{srv.host}/demo/a:latest",
           f"oci:{tmp_path / 'layout'}:a")
    dst = Lamina(tmp_path / "dst", tmp_path)
    dst.run("pull", f"{srv.host}/demo/a")
    assert dst.run("inspect", f"{srv.host}/demo/a").json()[0]["Id"] == \
        lam.run("inspect", "demo/a").json()[0]["Id"]
    assert (srv.log.read_text().count(" 307")) >= 5      # the config and four layers


def test_gateway_down_503_then_resumes(ceph_cluster: tuple[Ceph, Gateway], s3_bucket: str,
                                       s3_serve: Callable[..., Serve]) -> None:
    ceph, _ = ceph_cluster
    port = free_port()
    name = f"rgw-{port}"
    gw = ceph.start_gateway(port, name)     # a gateway of its own: the others keep theirs
    try:
        storage = StorageConfig("s3", gw.endpoint, gw.region, s3_bucket, gw.access_key,
                                gw.secret_key)
        srv = s3_serve(storage=storage, part_size=5 * MiB)
        small = random_bytes(2000, 1)
        big = random_bytes(9 * MiB, 2)
        with httpx.Client(timeout=60) as c:
            url = f"{srv.url}/v2/s3/faults"
            r = c.post(f"{url}/blobs/uploads/", params={"digest": digest_of(small)},
                       content=small)
            assert r.status_code == 201
            r = c.post(f"{url}/blobs/uploads/")
            upload = f"{srv.url}{r.headers['location']}"
            r = c.patch(upload, content=big[:6 * MiB])
            assert r.status_code == 202
            doomed = c.post(f"{url}/blobs/uploads/").headers["location"]
            assert c.patch(f"{srv.url}{doomed}", content=big[:1000]).status_code == 202
            ceph.stop_gateway(name)
            failed = [
                c.get(f"{url}/blobs/{digest_of(small)}"),
                c.head(f"{url}/blobs/{digest_of(small)}"),
                c.patch(upload, content=big[6 * MiB:7 * MiB],
                        headers={"Content-Range": f"{6 * MiB}-{7 * MiB - 1}"}),
                c.put(f"{srv.url}{doomed}", params={"digest": digest_of(big[:1000])}),
            ]
            for r in failed:
                assert r.status_code == 503, (r.request.method, r.status_code, r.text)
                if r.request.method != "HEAD":
                    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            # one line says the storage went away (not one per request)
            lines = [ln for ln in srv.log.read_text().splitlines()
                     if f"S3 {gw.endpoint}" in ln]
            assert len(lines) == 1, lines
            assert "cannot be reached" in lines[0] and "answering 503" in lines[0]
            # back: service resumes by itself, the upload from its last checkpoint
            ceph.start_gateway(port, name)
            r = c.get(f"{url}/blobs/{digest_of(small)}")
            assert r.status_code == 200 and r.content == small
            assert f"blob storage {gw.endpoint} is back" in srv.log.read_text()
            r = c.get(upload)
            assert r.status_code == 204 and r.headers["range"] == f"0-{6 * MiB - 1}"
            r = c.put(upload, params={"digest": digest_of(big)}, content=big[6 * MiB:],
                      headers={"Content-Range": f"{6 * MiB}-{len(big) - 1}"})
            assert r.status_code == 201, r.text
            assert c.get(f"{url}/blobs/{digest_of(big)}").content == big
            # the PUT that failed made nothing visible
            assert c.head(f"{url}/blobs/{digest_of(big[:1000])}").status_code == 404
        keys = bucket_keys(s3_client(gw), s3_bucket, "blobs/")
        assert keys == sorted([key_of(digest_of(small)), key_of(digest_of(big))])
    finally:
        ceph.stop_gateway(name)


def test_redirect_with_auth_drops_credentials(s3_serve: Callable[..., Serve],
                                              seeded: Path,  # noqa: F811
                                              tmp_path: Path) -> None:
    """Behind a token-protected registry, the 307 goes to another origin: lamina and
    skopeo must not send their Authorization there (RGW refuses a presigned GET that
    carries one: 400 InvalidArgument)."""
    _htpasswd(tmp_path / "htpasswd", {"alice": "wonderland"})
    srv = s3_serve(redirect=True)
    srv.stop()
    cfg = srv.extra[-1]
    Path(cfg).write_text(Path(cfg).read_text() + f'[auth]\nhtpasswd = "{tmp_path / "htpasswd"}"\n')
    srv.start()
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {srv.host: {
        "auth": base64.b64encode(b"alice:wonderland").decode()}}}))
    lam = copy_store(seeded, tmp_path / "src")
    lam.run("tag", "demo/a", f"{srv.host}/demo/a")
    lam.run("push", f"{srv.host}/demo/a")
    dst = Lamina(tmp_path / "dst", tmp_path)
    dst.run("pull", f"{srv.host}/demo/a")
    assert dst.run("inspect", f"{srv.host}/demo/a").json()[0]["Id"] == \
        lam.run("inspect", "demo/a").json()[0]["Id"]
    skopeo("copy", "--src-tls-verify=false", "--src-creds", "alice:wonderland",
           f"docker://{srv.host}/demo/a:latest", f"oci:{tmp_path / 'layout'}:a")
    assert srv.log.read_text().count(" 307") >= 10


def test_replica_pair_on_s3_and_postgres(tmp_path: Path, pg_url: str, seeded: Path,  # noqa: F811
                                         s3_storage: StorageConfig,
                                         s3_gateway: Gateway) -> None:
    """Two replicas on one bucket and one PostgreSQL database and nothing else shared
    (each its own store directory): the seed images A and B pushed through different
    replicas, B's shared layers mounted; pulls through the other; skopeo across; then
    ``lamina serve gc`` sweeps a blob nothing references from the bucket and keeps the
    rest."""
    cfg = tmp_path / "serve.toml"
    cfg.write_text(storage_toml(s3_storage, part_size=5 * MiB)
                   + f'[metadata]\nurl = "{pg_url}"\npool_size = 4\npool_wait = 1\n')
    r1 = Serve(tmp_path / "r1", tmp_path / "r1.log", "--config", str(cfg)).start()
    try:
        r2 = Serve(tmp_path / "r2", tmp_path / "r2.log", "--config", str(cfg)).start()
        try:
            seed_across_replicas(r1, r2, seeded, tmp_path)
            # a blob uploaded and never referenced (its lease expired: lease_ttl 0 here)
            junk = random_bytes(3000, 99)
            with httpx.Client(timeout=30) as c:
                r = c.post(f"{r2.url}/v2/junk/x/blobs/uploads/",
                           params={"digest": digest_of(junk)}, content=junk)
                assert r.status_code == 201
            before = set(bucket_keys(s3_client(s3_gateway), s3_storage.bucket, "blobs/"))
            assert key_of(digest_of(junk)) in before
            gc_cfg = tmp_path / "gc.toml"
            gc_cfg.write_text(cfg.read_text().replace("pool_wait = 1\n",
                                                      "pool_wait = 1\nlease_ttl = 0.001\n"))
            done = Lamina(tmp_path / "r1", tmp_path).run(
                "serve", "gc", "--root", str(tmp_path / "r1"), "--config", str(gc_cfg),
                "--json").json()
            assert digest_of(junk) in done["blobs_removed"]
            after = set(bucket_keys(s3_client(s3_gateway), s3_storage.bucket, "blobs/"))
            assert after == before - {key_of(digest_of(junk))}
            # and everything still pulls, through either replica
            dst2 = Lamina(tmp_path / "dst2", tmp_path)
            dst2.run("pull", f"{r1.host}/demo/a")
            dst2.run("pull", f"{r2.host}/copies/a:v1")
            dst2.assert_consistent()
        finally:
            r2.stop()
    finally:
        r1.stop()
