"""Delta pulls of zstd:chunked layers through a real docker-registry (issue 11, items 2,
3 and 5): pulled chunked layers are kept as chunks, and a pull of v2 with v1 present
fetches only the frames the store lacks, with the registry's digests, bytes counted in
the registry's own access log."""

from __future__ import annotations

import os
import re
from pathlib import Path

from registry_servers import DockerRegistry, pull_image, push_image

from lamina.digest import Digest
from lamina.image.reference import Reference
from lamina.layer.chunkmap import read_toc
from lamina.store.store import Store
from lamina_testing import Lamina

# "GET /v2/<repo>/blobs/sha256:... HTTP/1.1" 206 12345
_LINE = re.compile(r'"GET (/v2/(\S+?)/(blobs|manifests)/\S+) HTTP/[\d.]+" (\d+) (\d+)')


def wire_bytes(registry: DockerRegistry, repo: str) -> dict[str, int]:
    """Body bytes the registry sent for ``repo`` so far, by kind (blobs, manifests)."""
    import time

    time.sleep(0.05)
    out = {"blobs": 0, "manifests": 0}
    for line in registry.log.read_text(errors="replace").splitlines():
        m = _LINE.search(line)
        if m and m.group(2) == repo:
            out[m.group(3)] += int(m.group(5))
    return out


def _tree(root: Path, seed: int = 0, changed: bool = False, chmod: bool = False) -> Path:
    """~2,000 small text files plus eight 1 MiB files of random bytes."""
    import random

    rnd = random.Random(seed)
    for d in range(20):
        sub = root / f"d{d:02}"
        sub.mkdir(parents=True)
        for f in range(100):
            words = " ".join(str(rnd.randrange(10**6)) for _ in range(rnd.randrange(5, 60)))
            (sub / f"f{f:03}.txt").write_text(words + "\n")
    for i in range(8):
        data = bytearray(random.Random(1000 + i).randbytes(1 << 20))
        if changed and i == 3:
            data[:4096] = random.Random(7).randbytes(4096)
        (root / f"big{i}.bin").write_bytes(bytes(data))
    if chmod:
        os.chmod(root / "big5.bin", 0o600)
    for p in root.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    return root


def _layer(lamina: Lamina, name: str) -> dict[str, object]:
    layer = lamina.run("inspect", name).json()[0]["Manifest"]["layers"][0]
    assert isinstance(layer, dict)
    return layer


def test_pulled_chunked_layer_is_kept_as_chunks(lamina: Lamina, registry: DockerRegistry,
                                                tmp_path: Path) -> None:
    lamina.run("import", "--compression", "zstd:chunked", "dp/a:v1", _tree(tmp_path / "t"))
    space = lamina.run("df", "--json").json()["storage"]
    assert space["chunked_blobs"] == 1     # made locally: kept as chunks too
    dest = Reference.parse(f"{registry.host}/delta/keep:v1")
    with Store(lamina.root) as store:
        push_image(store, "dp/a:v1", dest)
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, dest)
    space = other.run("df", "--json").json()["storage"]
    assert space["chunked_blobs"] == 1 and space["chunks"] > 2000
    layer = _layer(lamina, "dp/a:v1")
    digest = Digest.parse(str(layer["digest"]))
    with Store(other.root) as store:
        assert store.blobs.read_bytes(digest, int(str(layer["size"])))   # digest checked
        annotations = layer["annotations"]
        assert isinstance(annotations, dict)
        chunked = store.blobs.chunked(digest)
        assert chunked is not None
        toc = read_toc(lambda off, n: chunked.pread(n, off), annotations,
                       int(str(layer["size"])))
        assert toc is not None
        big = next(e for e in toc.entries if e.name == "big3.bin")
        assert store.meta.find_chunk_for_content(big.chunks[0].chunk_digest)
    other.run("fsck")


def _push_pair(lamina: Lamina, registry: DockerRegistry, tmp_path: Path, repo: str,
               **v2: bool) -> tuple[str, str]:
    """v1 and v2 (``changed``/``chmod``) of the tree, chunked, in ``repo``."""
    lamina.run("import", "--compression", "zstd:chunked", f"{repo}:v1", _tree(tmp_path / "v1"))
    lamina.run("import", "--compression", "zstd:chunked", f"{repo}:v2",
               _tree(tmp_path / "v2", **v2))
    refs = []
    with Store(lamina.root) as store:
        for tag in ("v1", "v2"):
            dest = Reference.parse(f"{registry.host}/{repo}:{tag}")
            push_image(store, f"{repo}:{tag}", dest)
            refs.append(str(dest))
    return refs[0], refs[1]


def _frames_of(lamina: Lamina, name: str, files: set[str]) -> tuple[int, int]:
    """Compressed bytes of ``files``' payload frames, and of TOC + tar-split + footer."""
    layer = _layer(lamina, name)
    digest = Digest.parse(str(layer["digest"]))
    size = int(str(layer["size"]))
    with Store(lamina.root) as store:
        f = store.blobs.open_file(digest)
        annotations = layer["annotations"]
        assert isinstance(annotations, dict)
        toc = read_toc(lambda off, n: (f.seek(off), f.read(n))[1], annotations, size)
        f.close()
    assert toc is not None
    payload = sum(c.end_offset - c.offset for e in toc.entries if e.name in files
                  for c in e.chunks)
    return payload, size - toc.location.offset + 8


def _pull(other: Lamina, registry: DockerRegistry, repo: str, ref: str) -> tuple[int, str]:
    before = sum(wire_bytes(registry, repo).values())
    out = other.run("pull", ref).out
    return sum(wire_bytes(registry, repo).values()) - before, out


def _check_blob(lamina: Lamina, other: Lamina, name: str, ref: str) -> None:
    """The pulled layer is the registry's (same digest, reads back checked), kept as
    chunks, and the store is clean."""
    layer = _layer(lamina, name)
    assert _layer(other, ref)["digest"] == layer["digest"]
    digest = Digest.parse(str(layer["digest"]))
    with Store(other.root) as store:
        assert store.blobs.chunked(digest) is not None
        assert len(store.blobs.read_bytes(digest, int(str(layer["size"])))) == layer["size"]
    fsck = other.run("fsck", "--json").json()
    assert not any(v for k, v in fsck.items() if isinstance(v, list)), fsck


def test_delta_pull_fetches_only_the_changed_file(lamina: Lamina, registry: DockerRegistry,
                                                  tmp_path: Path) -> None:
    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/one", changed=True)
    other = Lamina(tmp_path / "other", tmp_path)
    full, _ = _pull(other, registry, "delta/one", v1)
    delta, out = _pull(other, registry, "delta/one", v2)
    changed, tail = _frames_of(lamina, "delta/one:v2", {"big3.bin"})
    manifest_and_config = 4096
    assert delta <= 1.1 * (changed + tail) + manifest_and_config, (delta, changed, tail, full)
    assert "Reused" in out and "Pull complete" in out, out
    _check_blob(lamina, other, "delta/one:v2", v2)


def test_delta_pull_of_a_chmod_fetches_a_few_kb(lamina: Lamina, registry: DockerRegistry,
                                                tmp_path: Path) -> None:
    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/mode", chmod=True)
    other = Lamina(tmp_path / "other", tmp_path)
    _pull(other, registry, "delta/mode", v1)
    delta, _ = _pull(other, registry, "delta/mode", v2)
    _, tail = _frames_of(lamina, "delta/mode:v2", set())
    assert delta - tail <= 16 << 10, (delta, tail)
    _check_blob(lamina, other, "delta/mode:v2", v2)
