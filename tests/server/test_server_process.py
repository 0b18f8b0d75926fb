"""``lamina serve`` as a real process, with real clients: lamina's own push/pull,
skopeo copy both ways, inspect and delete, umoci unpacking what comes back; auth and TLS
end to end; concurrent pushes sharing layers with ``lamina gc`` running; a graceful
shutdown that finishes the upload in flight, and the session resumed after restart."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from server_helpers import Serve, digest_of, random_bytes, skopeo

from lamina_testing import LAMINA, Lamina, import_seed_images, need

TLS_OFF = ("--tls-verify=false",)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, seed: Path) -> Path:
    """A store with demo/a and demo/b: three shared layers, one of their own each."""
    root = tmp_path_factory.mktemp("serve-seeded")
    import_seed_images(Lamina(root / "store", root), seed)
    return root / "store"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    srv = Serve(tmp_path / "served", tmp_path / "serve.log").start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _private_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_AUTH", str(tmp_path / "auth.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "containers-auth.json"))


def copy_store(src: Path, dst: Path) -> Lamina:
    shutil.copytree(src, dst)
    return Lamina(dst, dst.parent)


def test_lamina_push_and_pull(serve: Serve, seeded: Path, tmp_path: Path) -> None:
    lam = copy_store(seeded, tmp_path / "src")
    for name in ("a", "b"):
        lam.run("tag", f"demo/{name}", f"{serve.host}/demo/{name}")
    out_a = lam.run("push", f"{serve.host}/demo/a").out
    assert out_a.count("Pushed") == 4, out_a
    out_b = lam.run("push", f"{serve.host}/demo/b").out
    assert out_b.count("Mounted from demo/a") == 3 and out_b.count("Pushed") == 1, out_b
    # the pushes are local images of the served store; its blobs are stored once
    served = Lamina(serve.root, tmp_path)
    listed = {i["reference"]: i["digest"] for i in served.run("images", "--json").json()}
    pushed = {i["repository"]: i["digest"] for i in lam.run("images", "--json").json()}
    assert listed == {"docker.io/demo/a:latest": pushed["demo/a"],
                      "docker.io/demo/b:latest": pushed["demo/b"]}
    assert len(served.blob_files()) == len(lam.blob_files())
    # pull both into an empty store: B's shared layers are already there
    dst = Lamina(tmp_path / "dst", tmp_path)
    dst.run("pull", "--jobs", "1", f"{serve.host}/demo/a")
    out = dst.run("pull", "--jobs", "1", f"{serve.host}/demo/b").out
    assert out.count("Already exists") == 3, out
    want = lam.run("inspect", "demo/b").json()[0]["Id"]
    assert dst.run("inspect", f"{serve.host}/demo/b").json()[0]["Id"] == want
    dst.assert_consistent()


def test_skopeo_both_ways_and_umoci(serve: Serve, seeded: Path, tmp_path: Path) -> None:
    umoci = need("umoci")
    lam = copy_store(seeded, tmp_path / "src")
    lam.run("tag", "demo/a", f"{serve.host}/demo/a")
    lam.run("push", f"{serve.host}/demo/a")
    info = json.loads(skopeo("inspect", *TLS_OFF, f"docker://{serve.host}/demo/a").stdout)
    assert len(info["Layers"]) == 4
    # pull with skopeo, unpack with umoci: the page of image A
    skopeo("copy", "--src-tls-verify=false", f"docker://{serve.host}/demo/a:latest",
           f"oci:{tmp_path / 'layout'}:a")
    subprocess.run([umoci, "unpack", "--rootless", "--image", f"{tmp_path / 'layout'}:a",
                    str(tmp_path / "bundle")], check=True, capture_output=True)
    assert "A" in (tmp_path / "bundle" / "rootfs" / "var" / "www" / "html" /
                   "index.html").read_text()
    # push with skopeo (to a new repository: layers mounted or uploaded), both types
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:a",
           f"docker://{serve.host}/copies/a:v1")
    skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2",
           f"oci:{tmp_path / 'layout'}:a", f"docker://{serve.host}/copies/docker:v1")
    raw = skopeo("inspect", "--raw", *TLS_OFF, f"docker://{serve.host}/copies/docker:v1")
    assert json.loads(raw.stdout)["mediaType"] == \
        "application/vnd.docker.distribution.manifest.v2+json"
    tags = json.loads(skopeo("list-tags", *TLS_OFF, f"docker://{serve.host}/copies/a").stdout)
    assert tags["Tags"] == ["v1"]
    # and back again through lamina's pull: the same image id
    dst = Lamina(tmp_path / "dst", tmp_path)
    dst.run("pull", f"{serve.host}/copies/a:v1")
    want = lam.run("inspect", "demo/a").json()[0]["Id"]
    assert dst.run("inspect", f"{serve.host}/copies/a:v1").json()[0]["Id"] == want
    # skopeo delete: gone by tag and digest
    skopeo("delete", *TLS_OFF, f"docker://{serve.host}/copies/a:v1")
    gone = skopeo("inspect", *TLS_OFF, f"docker://{serve.host}/copies/a:v1", check=False)
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr.lower()


def test_serves_a_built_store(seeded: Path, tmp_path: Path) -> None:
    lam = copy_store(seeded, tmp_path / "store")
    srv = Serve(lam.root, tmp_path / "serve.log").start()
    try:
        info = json.loads(skopeo("inspect", *TLS_OFF, f"docker://{srv.host}/demo/b").stdout)
        local = {i["repository"]: i["digest"] for i in lam.run("images", "--json").json()}
        assert info["Digest"] == local["demo/b"]
        assert len(info["Layers"]) == 4
        r = httpx.get(f"{srv.url}/v2/_catalog")
        assert r.json()["repositories"] == ["demo/a", "demo/b"]
    finally:
        srv.stop()


def _htpasswd(path: Path, users: dict[str, str]) -> None:
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                            for u, p in users.items()))


def test_auth_and_tls(seeded: Path, tmp_path: Path) -> None:
    openssl = need("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True,
                   capture_output=True)
    _htpasswd(tmp_path / "htpasswd", {"alice": "wonderland", "bob": "builder"})
    (tmp_path / "serve.toml").write_text("""
[auth]
htpasswd = "htpasswd"
[[access]]
who = ["alice"]
repositories = ["*"]
actions = ["*"]
[[access]]
who = ["bob"]
repositories = ["*"]
actions = ["pull"]
""")
    srv = Serve(tmp_path / "served", tmp_path / "serve.log", "--config",
                str(tmp_path / "serve.toml"), "--tls-cert", str(cert), "--tls-key", str(key),
                tls=True).start()
    try:
        lam = copy_store(seeded, tmp_path / "src")
        lam.run("tag", "demo/a", f"{srv.host}/demo/a")
        denied = lam.run("push", "--ca-bundle", str(cert), f"{srv.host}/demo/a", check=False)
        assert denied.code != 0 and "Traceback" not in denied.err
        (tmp_path / "auth.json").write_text(json.dumps({"auths": {srv.host: {
            "auth": base64.b64encode(b"alice:wonderland").decode()}}}))
        lam.run("push", "--ca-bundle", str(cert), f"{srv.host}/demo/a")   # 401→token→retry
        # skopeo over TLS with credentials; bob may pull, not push
        skopeo("inspect", "--cert-dir", str(tmp_path / "nocerts"), "--tls-verify=false",
               "--creds", "bob:builder", f"docker://{srv.host}/demo/a")
        no = skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "--src-creds", "bob:builder", "--dest-creds", "bob:builder",
                    f"docker://{srv.host}/demo/a", f"docker://{srv.host}/bob/a", check=False)
        assert no.returncode != 0
        assert "denied" in no.stderr.lower() or "unauthorized" in no.stderr.lower()
        skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
               "--src-creds", "alice:wonderland", "--dest-creds", "alice:wonderland",
               f"docker://{srv.host}/demo/a", f"docker://{srv.host}/alice/a")
        skopeo("delete", "--tls-verify=false", "--creds", "alice:wonderland",
               f"docker://{srv.host}/alice/a:latest")
        wrong = skopeo("inspect", "--tls-verify=false", "--creds", "alice:nope",
                       f"docker://{srv.host}/demo/a", check=False)
        assert wrong.returncode != 0
    finally:
        srv.stop()


def test_concurrent_pushes_with_gc(serve: Serve, seeded: Path, tmp_path: Path) -> None:
    srcs = []
    for name in ("a", "b"):
        lam = copy_store(seeded, tmp_path / f"src-{name}")
        lam.run("tag", f"demo/{name}", f"{serve.host}/conc/{name}")
        srcs.append((lam, f"{serve.host}/conc/{name}"))
    served = Lamina(serve.root, tmp_path)
    stop = threading.Event()
    gc_runs = []

    def gc_loop() -> None:
        while not stop.is_set() and len(gc_runs) < 20:
            gc_runs.append(served.run("gc", check=False).code)

    gc = threading.Thread(target=gc_loop)
    gc.start()
    procs = [subprocess.Popen([LAMINA, "push", ref], env=lam.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for lam, ref in srcs]
    outs = [p.communicate(timeout=120) for p in procs]
    stop.set()
    gc.join()
    assert all(p.returncode == 0 for p in procs), outs
    assert gc_runs and all(code == 0 for code in gc_runs)
    served.run("gc")
    dst = Lamina(tmp_path / "dst", tmp_path)
    for _, ref in srcs:
        dst.run("pull", ref)       # every digest verified on the way in
    dst.assert_consistent()
    served.run("fsck")


def test_graceful_shutdown_finishes_upload(tmp_path: Path) -> None:
    srv = Serve(tmp_path / "served", tmp_path / "serve.log").start()
    blob = random_bytes(4 << 20, 1)
    try:
        r = httpx.post(f"{srv.url}/v2/slow/a/blobs/uploads/")
        loc = srv.url + r.headers["location"]
        result: dict[str, httpx.Response] = {}

        def body() -> Iterator[bytes]:
            for i in range(0, 2 << 20, 256 << 10):
                yield blob[i:i + (256 << 10)]
                time.sleep(0.1)

        t = threading.Thread(target=lambda: result.update(r=httpx.patch(
            loc, content=body(), timeout=30)))
        t.start()
        deadline = time.monotonic() + 20     # until the server has part of the body
        while httpx.get(loc).headers.get("range", "0-0") == "0-0":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)      # mid-request
        t.join(30)
        assert result["r"].status_code == 202
        assert result["r"].headers["range"] == f"0-{(2 << 20) - 1}"
        assert srv.stop() == 0
        srv.start()         # same store, new process, new port: the session resumes
        loc = srv.url + r.headers["location"]
        r = httpx.get(loc)
        assert r.status_code == 204 and r.headers["range"] == f"0-{(2 << 20) - 1}"
        r = httpx.put(loc, params={"digest": digest_of(blob)}, content=blob[2 << 20:])
        assert r.status_code == 201, r.text
        r = httpx.get(f"{srv.url}/v2/slow/a/blobs/{digest_of(blob)}")
        assert r.content == blob
    finally:
        srv.stop()
    assert '"PATCH /v2/slow/a/blobs/uploads/' in (tmp_path / "serve.log").read_text()
