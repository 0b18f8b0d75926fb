"""#10.14: a ``docker save`` archive's uncompressed layers are stored as gzip on load, so
the loaded image costs what the pulled one does, a push sends gzip (as Docker pushes),
and pulling what was pushed finds every layer already there."""

from __future__ import annotations

import json
import tarfile
import uuid
from pathlib import Path

import httpx
from registry_servers import DockerRegistry

from image_surgery import small_layout
from lamina_testing import Lamina

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _store_bytes(lamina: Lamina) -> dict[str, int]:
    blobs = lamina.root / "blobs" / "sha256"
    return {p.name: p.stat().st_size for p in blobs.iterdir()}


def test_loaded_archive_is_stored_and_pushed_as_gzip(lamina: Lamina, make_lamina: object,
                                                     registry: DockerRegistry,
                                                     tmp_path: Path) -> None:
    origin = Lamina(tmp_path / "scratch-store", tmp_path)
    small_layout(tmp_path)           # imports demo/x into the scratch store
    archive = tmp_path / "x.tar"
    origin.run("save", "demo/x", "-o", archive)
    with tarfile.open(archive) as tf:
        listing = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        plain = [tf.getmember(name).size for name in listing[0]["Layers"]]
    lamina.run("load", archive)
    # the same image costs the same bytes in both stores: the very same gzip blobs
    assert _store_bytes(lamina) == _store_bytes(origin)
    assert sum(_store_bytes(lamina).values()) < sum(plain)
    image = lamina.run("inspect", "demo/x").json()[0]
    assert image["Id"] == origin.run("inspect", "demo/x").json()[0]["Id"]
    assert [d["mediaType"] for d in image["Manifest"]["layers"]] == [GZIP, GZIP]

    ref = f"{registry.host}/archive-{uuid.uuid4().hex[:8]}/x:v1"
    lamina.run("tag", "demo/x", ref)
    lamina.run("push", ref)
    repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
    base = f"http://{registry.host}/v2/{repo}"
    manifest = httpx.get(f"{base}/manifests/v1", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    for layer in manifest["layers"]:
        assert layer["mediaType"] == GZIP
        blob = httpx.get(f"{base}/blobs/{layer['digest']}", follow_redirects=True)
        assert blob.content[:2] == b"\x1f\x8b" and len(blob.content) == layer["size"]

    # pulling what was pushed, into the loading store and into the original one
    for store in (lamina, origin):
        lines = store.run("pull", "--jobs", "1", ref).out.splitlines()
        assert sum(line.endswith(": Already exists") for line in lines) == 2, lines
        assert not any(line.endswith(": Pull complete") for line in lines), lines
        store.assert_consistent()


def test_copy_from_an_archive_to_a_registry_sends_gzip(lamina: Lamina, registry: DockerRegistry,
                                                       tmp_path: Path) -> None:
    """Straight from the archive, not through a store: the plain layers leave gzip'd, as
    Docker pushes them — the same bytes ``load`` stores, so a store that loaded the
    archive already has every layer of what was pushed."""
    origin = Lamina(tmp_path / "scratch-store", tmp_path)
    small_layout(tmp_path)
    archive = tmp_path / "x.tar"
    origin.run("save", "demo/x", "-o", archive)
    ref = f"{registry.host}/copied-{uuid.uuid4().hex[:8]}/x:v1"
    out = lamina.run("copy", "--json", f"docker-archive:{archive}", f"docker://{ref}").json()
    repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
    base = f"http://{registry.host}/v2/{repo}"
    raw = httpx.get(f"{base}/manifests/v1", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert raw.headers["docker-content-digest"] == out["digest"]
    manifest = raw.json()
    for layer in manifest["layers"]:
        assert layer["mediaType"] == GZIP
        blob = httpx.get(f"{base}/blobs/{layer['digest']}", follow_redirects=True)
        assert blob.content[:2] == b"\x1f\x8b" and len(blob.content) == layer["size"]
    lamina.run("load", archive)
    assert lamina.run("inspect", "demo/x").json()[0]["Digest"] == out["digest"]
    lines = lamina.run("pull", "--jobs", "1", ref).out.splitlines()
    assert sum(line.endswith(": Already exists") for line in lines) == 2, lines
    lamina.assert_consistent()
