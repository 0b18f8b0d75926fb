"""A blob kept as chunks (store/chunks.py) leaves the store with its exact bytes: a push to
a real docker-registry streams it (no sendfile: it is no one file) under its own digest,
monolithic and in chunked uploads, and a pull brings back the same bytes."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from registry_servers import DockerRegistry, push_image

from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.registry import BlobPush, RegistryOptions
from lamina_testing import Lamina, store_chunked_image


@pytest.mark.parametrize("chunk_size", [None, 16_384])
def test_push_of_a_chunked_blob_keeps_its_digest(registry: DockerRegistry, tmp_path: Path,
                                                  chunk_size: int | None) -> None:
    rnd = random.Random(chunk_size)
    files = [(f"f{i}.bin", rnd.randbytes(9_000)) for i in range(8)]
    image = store_chunked_image(tmp_path / "store", "docker.io/demo/chunked:latest", files,
                                span=2_500)
    lam = Lamina(tmp_path / "store", tmp_path)
    dest = Reference.parse(f"{registry.host}/chunks/c{chunk_size or 0}:v1")
    fates: list[BlobPush] = []
    with Store(lam.root) as store:
        push_image(store, "demo/chunked", dest, replace(RegistryOptions(), chunk_size=chunk_size),
                   on_blob=fates.append)
    assert sorted(p.kind for p in fates) == ["pushed", "pushed"]
    r = httpx.get(f"http://{registry.host}/v2/chunks/c{chunk_size or 0}/blobs/{image.layer}")
    assert r.status_code == 200
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == image.layer
    assert r.content == image.layer_bytes
    # a pull into an empty store: the image is the same image
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("pull", str(dest))
    assert other.run("inspect", str(dest)).json()[0]["Id"] == \
        lam.run("inspect", "demo/chunked").json()[0]["Id"]
    other.run("unpack", str(dest), tmp_path / "out")
    for name, data in files:
        assert (tmp_path / "out" / name).read_bytes() == data
    lam.assert_consistent()
    other.assert_consistent()
