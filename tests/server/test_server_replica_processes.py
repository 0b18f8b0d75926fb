"""Two ``lamina serve`` processes on one blob storage and one PostgreSQL database
(pg_fixture.py) — a shared directory, or an S3 bucket on a real Ceph gateway
(s3_fixture.py) with a store root of its own per replica, as on two machines — with
real clients: lamina pushes the seed images A and B through
different replicas (B's shared layers mounted), skopeo pushes through replica 1 and pulls
through replica 2; pushes through both at once while ``lamina serve gc`` sweeps in a
loop; kill -9 of a replica mid-upload, the client resuming on the other; PostgreSQL
stopped under a replica: 503, one log line, and recovery."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pg_fixture import Postgres
from s3_fixture import storage_toml
from server_helpers import Serve, digest_of, random_bytes, skopeo
from test_server_process import _private_auth, copy_store  # noqa: F401 - fixtures
from test_server_process import seeded as seeded  # noqa: F401 - a fixture

from lamina.digest import Digest
from lamina.server.config import StorageConfig
from lamina.server.storage import open_storage
from lamina.store import Store
from lamina_testing import LAMINA, Lamina

TLS_OFF = ("--tls-verify=false",)


def write_config(tmp_path: Path, url: str, storage: StorageConfig | None = None) -> Path:
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[metadata]\nurl = "{url}"\npool_size = 4\npool_wait = 1\n'
                   + ("" if storage is None else storage_toml(storage)))
    return cfg


@pytest.fixture(params=["local", "s3"])
def pair(tmp_path: Path, pg_url: str, request: pytest.FixtureRequest
         ) -> Iterator[tuple[Serve, Serve]]:
    """Two replicas: on one directory ("local"), or on S3 with a root each ("s3")."""
    s3 = request.param == "s3"
    storage = request.getfixturevalue("s3_storage") if s3 else None
    cfg = write_config(tmp_path, pg_url, storage)
    roots = [tmp_path / "r1", tmp_path / "r2"] if s3 else [tmp_path / "shared"] * 2
    r1 = Serve(roots[0], tmp_path / "r1.log", "--config", str(cfg)).start()
    try:
        r2 = Serve(roots[1], tmp_path / "r2.log", "--config", str(cfg)).start()
    except BaseException:
        r1.stop()
        raise
    r1.storage = r2.storage = storage    # type: ignore[attr-defined]
    yield r1, r2
    r2.stop()
    r1.stop()


@pytest.fixture
def local_pair(tmp_path: Path, pg_url: str) -> Iterator[tuple[Serve, Serve]]:
    cfg = write_config(tmp_path, pg_url)
    root = tmp_path / "shared"
    r1 = Serve(root, tmp_path / "r1.log", "--config", str(cfg)).start()
    try:
        r2 = Serve(root, tmp_path / "r2.log", "--config", str(cfg)).start()
    except BaseException:
        r1.stop()
        raise
    yield r1, r2
    r2.stop()
    r1.stop()


def seed_across_replicas(r1: Serve, r2: Serve, seeded: Path, tmp_path: Path) -> None:
    """The seed images A and B pushed through different replicas (B's shared layers
    mounted), pulled through the other; skopeo pushes through replica 1 and pulls the
    same bytes through replica 2 (``copies/a:v1``)."""
    lam = copy_store(seeded, tmp_path / "src")
    lam.run("tag", "demo/a", f"{r1.host}/demo/a")
    lam.run("tag", "demo/a", f"{r2.host}/demo/a")
    lam.run("tag", "demo/b", f"{r2.host}/demo/b")
    assert lam.run("push", f"{r1.host}/demo/a").out.count("Pushed") == 4
    # replica 2 has what replica 1 took (a client tells registries apart by address:
    # this push teaches it that replica 2's demo/a holds A's layers, to mount from)
    out_a = lam.run("push", f"{r2.host}/demo/a").out
    assert out_a.count("Layer already exists") == 4, out_a
    out_b = lam.run("push", f"{r2.host}/demo/b").out
    assert out_b.count("Mounted from demo/a") == 3 and out_b.count("Pushed") == 1, out_b
    # (on S3 with a store each, replica 1 never had B's manifest on its disk)
    dst = Lamina(tmp_path / "dst", tmp_path)
    dst.run("pull", "--jobs", "1", f"{r2.host}/demo/a")
    out = dst.run("pull", "--jobs", "1", f"{r1.host}/demo/b").out
    assert out.count("Already exists") == 3, out
    assert dst.run("inspect", f"{r1.host}/demo/b").json()[0]["Id"] == \
        lam.run("inspect", "demo/b").json()[0]["Id"]
    dst.assert_consistent()
    skopeo("copy", "--src-tls-verify=false", f"docker://{r1.host}/demo/a:latest",
           f"oci:{tmp_path / 'layout'}:a")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:a",
           f"docker://{r1.host}/copies/a:v1")
    skopeo("copy", "--src-tls-verify=false", f"docker://{r2.host}/copies/a:v1",
           f"oci:{tmp_path / 'back'}:a")
    sent = json.loads((tmp_path / "layout" / "index.json").read_text())["manifests"][0]
    got = json.loads((tmp_path / "back" / "index.json").read_text())["manifests"][0]
    assert got["digest"] == sent["digest"]
    tags = json.loads(skopeo("list-tags", *TLS_OFF, f"docker://{r2.host}/copies/a").stdout)
    assert tags["Tags"] == ["v1"]


def test_lamina_and_skopeo_across_replicas(pair: tuple[Serve, Serve], seeded: Path,
                                           tmp_path: Path) -> None:
    seed_across_replicas(*pair, seeded, tmp_path)


def test_pushes_on_both_replicas_while_gc_sweeps(pair: tuple[Serve, Serve], seeded: Path,
                                                 tmp_path: Path, pg_url: str) -> None:
    r1, r2 = pair
    storage_cfg = r1.storage                 # type: ignore[attr-defined]
    cfg = write_config(tmp_path, pg_url, storage_cfg)
    root = r1.root
    # Blobs no manifest reaches and no lease names, added all along: gc always has
    # something to delete while the pushes run.
    stop = threading.Event()
    junk: list[str] = []

    def litter() -> None:
        store = Store(root)
        storage = open_storage(storage_cfg or StorageConfig(), store)
        try:
            i = 0
            while not stop.is_set():
                data = random_bytes(20_000, 1000 + i)
                storage.put_bytes(Digest.from_bytes(data), data)
                junk.append(digest_of(data))
                i += 1
                time.sleep(0.05)
        finally:
            storage.close()
            store.close()

    gc_out: list[subprocess.CompletedProcess[str]] = []

    def gc_loop() -> None:
        while not stop.is_set():
            gc_out.append(subprocess.run(
                [LAMINA, "serve", "gc", "--root", str(root), "--config", str(cfg), "--json"],
                capture_output=True, text=True, timeout=120))

    helpers = [threading.Thread(target=litter), threading.Thread(target=gc_loop)]
    for t in helpers:
        t.start()
    refs = []
    try:
        procs = []
        for i, (name, srv) in enumerate([("a", r1), ("b", r2), ("b", r1), ("a", r2)]):
            lam = copy_store(seeded, tmp_path / f"src-{i}")
            ref = f"{srv.host}/conc/{name}{i}"
            lam.run("tag", f"demo/{name}", ref)
            refs.append(ref)
            procs.append(subprocess.Popen([LAMINA, "push", ref], env=lam.env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        outs = [p.communicate(timeout=180) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        deadline = time.monotonic() + 120
        while len(gc_out) < 3:          # gc has swept while and after they pushed
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        for t in helpers:
            t.join()
    assert all(p.returncode == 0 for p in gc_out), [p.stderr for p in gc_out]
    removed = {b for p in gc_out for b in json.loads(p.stdout)["blobs_removed"]}
    assert removed and removed <= set(junk)
    # every pushed image pulls through the other replica and verifies
    dst = Lamina(tmp_path / "dst", tmp_path)
    for ref in refs:
        host = r2.host if ref.startswith(r1.host) else r1.host
        dst.run("pull", ref.replace(ref.split("/")[0], host))
    dst.assert_consistent()


def test_kill_replica_mid_upload_resume_on_other(pair: tuple[Serve, Serve]) -> None:
    r1, r2 = pair
    blob = random_bytes(6 << 20, 3)
    first = 2 << 20
    r = httpx.post(f"{r1.url}/v2/kill/a/blobs/uploads/")
    loc = r.headers["location"]
    r = httpx.patch(r1.url + loc, content=blob[:first],
                    headers={"Content-Range": f"0-{first - 1}"})
    assert r.status_code == 202

    def body() -> Iterator[bytes]:      # the second chunk, slowly: r1 dies under it
        for i in range(first, 4 << 20, 256 << 10):
            yield blob[i:i + (256 << 10)]
            time.sleep(0.1)

    def doomed() -> None:
        with contextlib.suppress(httpx.HTTPError):   # r1 dies under it
            httpx.patch(r1.url + loc, content=body(), timeout=30)

    t = threading.Thread(target=doomed, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while int(httpx.get(r1.url + loc).headers["range"].split("-")[1]) < first:
        assert time.monotonic() < deadline, "r1 never took the second chunk"
        time.sleep(0.02)
    assert r1.stop(signal.SIGKILL) == -signal.SIGKILL
    t.join(30)
    # the client asks the other replica where the upload stands, and goes on there
    r = httpx.get(r2.url + loc)
    assert r.status_code == 204, r.text
    at = int(r.headers["range"].split("-")[1]) + 1
    assert at == first            # what r1 recorded; what it took after is not vouched for
    r = httpx.patch(r2.url + loc, content=blob[at:5 << 20],
                    headers={"Content-Range": f"{at}-{(5 << 20) - 1}"})
    assert r.status_code == 202, r.text
    r = httpx.put(r2.url + loc, params={"digest": digest_of(blob)}, content=blob[5 << 20:])
    assert r.status_code == 201, r.text
    r = httpx.get(f"{r2.url}/v2/kill/a/blobs/{digest_of(blob)}")
    assert r.status_code == 200 and digest_of(r.content) == digest_of(blob)


def test_postgres_stopped_503_then_recovers(local_pair: tuple[Serve, Serve],
                                            pg_server: Postgres) -> None:
    r1, r2 = local_pair
    data = random_bytes(5000, 4)
    r = httpx.post(f"{r1.url}/v2/pg/a/blobs/uploads/", params={"digest": digest_of(data)},
                   content=data)
    assert r.status_code == 201
    pg_server.stop()
    try:
        for srv in (r1, r2, r1):
            r = httpx.get(f"{srv.url}/v2/pg/a/blobs/{digest_of(data)}", timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
        other = random_bytes(5000, 5)
        r = httpx.post(f"{r2.url}/v2/pg/b/blobs/uploads/", params={"digest": digest_of(other)},
                       content=other, timeout=30)
        assert r.status_code == 503
    finally:
        pg_server.start()
    for srv in (r1, r2):
        deadline = time.monotonic() + 60
        while httpx.get(f"{srv.url}/v2/pg/a/blobs/{digest_of(data)}").status_code != 200:
            assert time.monotonic() < deadline, srv.log.read_text()[-2000:]
            time.sleep(0.2)
    # the refused upload left nothing behind: not linked, a new push works
    assert httpx.head(f"{r1.url}/v2/pg/b/blobs/{digest_of(other)}").status_code == 404
    for srv in (r1, r2):
        lines = [ln for ln in srv.log.read_text().splitlines() if "answering 503" in ln]
        assert len(lines) == 1, srv.log.read_text()[-3000:]
        assert "metadata database unavailable" in lines[0]


def test_gc_on_a_schedule(tmp_path: Path, pg_url: str) -> None:
    cfg = write_config(tmp_path, pg_url)
    cfg.write_text(cfg.read_text() + "gc_interval = 0.5\n")
    root = tmp_path / "shared"
    srv = Serve(root, tmp_path / "r.log", "--config", str(cfg)).start()
    try:
        data = random_bytes(3000, 6)
        r = httpx.post(f"{srv.url}/v2/sch/a/blobs/uploads/", params={"digest": digest_of(data)},
                       content=data)
        assert r.status_code == 201          # leased: the schedule keeps it
        store = Store(root)
        try:
            junk = store.blobs.put_bytes(random_bytes(3000, 7))
            deadline = time.monotonic() + 60
            while store.blobs.has(junk):
                assert time.monotonic() < deadline, srv.log.read_text()[-2000:]
                time.sleep(0.1)
            assert store.blobs.has(next(d for d in store.blobs.list()
                                        if str(d) == digest_of(data)))
        finally:
            store.close()
    finally:
        srv.stop()
