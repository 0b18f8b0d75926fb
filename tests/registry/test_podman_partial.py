"""Podman pulls lamina's zstd:chunked layers partially (issue 11): Debian 12's podman 4.3
(containers/storage 1.43, containers/image 5.23) with ``enable_partial_images`` reads the
TOC of a lamina-written layer, fetches the file frames it lacks with Range requests
from a real docker-registry, and stores the tree lamina built; with v1 present it fetches
only the changed file's chunk.  The evidence is the registry's own access log: every GET
of the layer blob is a 206 and the bytes are counted there.

Podman runs with a storage of its own in a temporary directory (``podman_peer.Podman``),
never the machine's; teardown unmounts what it mounted and removes it.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_servers import DockerRegistry

from lamina.digest import Digest
from lamina.layer.chunkmap import read_toc
from lamina.layer.zstdchunked import (
    LEGACY_CHECKSUM_ANNOTATION,
    LEGACY_POSITION_ANNOTATION,
    POSITION_ANNOTATION,
    Toc,
)
from lamina.store.store import Store
from lamina_testing import Lamina, need, need_root, tree_listing
from podman_peer import Podman

MTIME = 1_700_000_000
BIG = 3 << 20        # big.bin: several of lamina's chunks (1 MiB at least each)


@pytest.fixture
def podman(registry: DockerRegistry) -> Iterator[Podman]:
    need_root()    # overlay storage and image mounts
    # a short path: podman refuses a run root longer than 50 characters
    p = Podman(Path(tempfile.mkdtemp(prefix="lamina-podman-")), registry.host,
               need("podman"))
    try:
        yield p
    finally:
        p.close()


def _tree(root: Path, changed: bool = False) -> Path:
    """Regular files of several sizes (empty to several chunks), modes, owners, a user
    xattr, a hard link, a symlink, an empty directory; ``changed``: the first 4 KiB of
    big.bin differ."""
    rnd = random.Random(11)
    (root / "sub").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "owned").mkdir(mode=0o700)
    for name, size in (("empty", 0), ("tiny", 10), ("small.bin", 5000), ("mid.bin", 70_000),
                       ("run.sh", 300_000)):
        (root / name).write_bytes(rnd.randbytes(size))
    big = bytearray(rnd.randbytes(BIG))
    if changed:
        big[:4096] = random.Random(12).randbytes(4096)
    (root / "big.bin").write_bytes(bytes(big))
    (root / "sub" / "text.txt").write_text("hello, layers\n" * 500)
    (root / "owned" / "secret").write_text("mine\n")
    os.chmod(root / "run.sh", 0o750)
    os.chmod(root / "owned" / "secret", 0o640)
    os.chown(root / "owned", 1000, 1000)
    os.chown(root / "owned" / "secret", 1000, 1000)
    os.setxattr(root / "small.bin", "user.lamina", b"chunked")
    os.link(root / "mid.bin", root / "sub" / "hard.bin")
    os.symlink("../small.bin", root / "sub" / "link")
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(p, (MTIME, MTIME), follow_symlinks=False)
    return root


def _listing(root: Path, owners: bool) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type, mode, content digest or link target, size, user
    xattrs, the first name of its hard-link group; with ``owners``, uid, gid and mtime."""
    out = {}
    first: dict[int, str] = {}
    for rel, (kind, mode, uid, gid, content) in sorted(tree_listing(root).items()):
        path = root / rel
        st = os.lstat(path)
        regular = stat.S_ISREG(st.st_mode)
        xattrs = {} if stat.S_ISLNK(st.st_mode) else {
            k: os.getxattr(path, k) for k in os.listxattr(path) if k.startswith("user.")}
        group = first.setdefault(st.st_ino, rel) if regular and st.st_nlink > 1 else None
        meta = (uid, gid, st.st_mtime_ns) if owners else None
        out[rel] = (kind, mode, content, st.st_size if regular else None, xattrs, group, meta)
    return out


_GET = re.compile(r'"GET /v2/(\S+?)/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d+) (\d+)')


def _blob_gets(registry: DockerRegistry, since: int, repo: str, digest: str
               ) -> list[tuple[int, int]]:
    """(status, body bytes) of every GET of blob ``digest`` in ``repo`` that the
    registry's access log records after its first ``since`` bytes."""
    time.sleep(0.05)   # the line is written as the response completes
    with open(registry.log, "rb") as f:
        f.seek(since)
        lines = f.read().decode(errors="replace").splitlines()
    return [(int(m.group(3)), int(m.group(4))) for m in map(_GET.search, lines)
            if m and m.group(1) == repo and m.group(2) == digest]


def _layer(lamina: Lamina, ref: str) -> tuple[dict[str, Any], Toc]:
    """The image's one layer descriptor (as lamina pushed it) and its TOC."""
    layer = lamina.run("inspect", ref).json()[0]["Manifest"]["layers"][0]
    assert isinstance(layer, dict)
    size = int(layer["size"])
    with Store(lamina.root) as store:
        f = store.blobs.open_file(Digest.parse(layer["digest"]))
        try:
            toc = read_toc(lambda off, n: (f.seek(off), f.read(n))[1], layer["annotations"],
                           size)
        finally:
            f.close()
    assert toc is not None
    return layer, toc


def _pull_partially(podman: Podman, registry: DockerRegistry, ref: str,
                    layer: dict[str, Any]) -> list[tuple[int, int]]:
    """podman pulls ``ref``; returns the GETs of its layer, checked to be a partial pull:
    Range answers only (206), the first the TOC, nothing fetched twice over."""
    since = registry.log.stat().st_size
    log = podman.pull(ref)
    repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
    gets = _blob_gets(registry, since, repo, layer["digest"])
    toc_length = int(layer["annotations"][POSITION_ANNOTATION].split(":")[1])
    assert gets and all(status == 206 for status, _ in gets), (gets, log[-3000:])
    assert gets[0][1] == toc_length, (gets, log[-3000:])
    assert sum(n for _, n in gets) < layer["size"] + 4096, gets
    return gets


def test_podman_partially_pulls_lamina_chunked_layers(
        lamina: Lamina, registry: DockerRegistry, podman: Podman, tmp_path: Path) -> None:
    repo = "podman/partial"
    v1, v2 = f"{registry.host}/{repo}:v1", f"{registry.host}/{repo}:v2"
    t1, t2 = _tree(tmp_path / "v1"), _tree(tmp_path / "v2", changed=True)
    # v1 made chunked by import; v2 a gzip layer converted on the way out (the writer's
    # two entry points)
    lamina.run("import", "--compression", "zstd:chunked", v1, t1)
    lamina.run("import", v2, t2)
    lamina.run("push", v1)
    lamina.run("push", "--dest-compress-format", "zstd:chunked", v2)
    lamina.run("pull", v2)    # the converted manifest, as the registry holds it
    layer1, toc1 = _layer(lamina, v1)
    layer2, toc2 = _layer(lamina, v2)
    assert LEGACY_CHECKSUM_ANNOTATION in layer2["annotations"]

    # (a) v1 into an empty podman storage: TOC, then the frames, all by Range
    _pull_partially(podman, registry, v1, layer1)
    # (b) the tree podman stored is the tree lamina built.  Not owners and mtimes:
    # containers/storage 1.43's TOC parser (cache_linux.go unmarshalToc) matches the keys
    # "UID", "GID", "ModTime" while its writer (and lamina) write "uid", "gid", "modtime",
    # so a partial pull leaves every file 0:0 with the time of the pull, whoever wrote
    # the layer (skopeo 1.9's too; fixed in v1.47, d53cea9 and f3a7e9c).
    assert _listing(podman.mount(v1), owners=False) == _listing(t1, owners=False)

    # (c) v2 with v1 present: only the frames of big.bin's changed chunk move
    v1_files = {e.digest for e in toc1.entries}
    v1_chunks = {c.chunk_digest for e in toc1.entries for c in e.chunks}
    missing = [c for e in toc2.entries if e.digest not in v1_files
               for c in e.chunks if c.chunk_digest not in v1_chunks]
    assert {e.name for e in toc2.entries if e.digest not in v1_files} == {"big.bin"}
    assert 0 < len(missing) < len(next(e for e in toc2.entries if e.name == "big.bin").chunks)
    want = sum(c.end_offset - c.offset for c in missing)
    gets = _pull_partially(podman, registry, v2, layer2)
    fetched = sum(n for _, n in gets[1:])
    # one range is answered as it is; several as multipart/byteranges (a part header each)
    assert want <= fetched <= want + 200 * (len(missing) - 1), (want, gets)
    assert fetched < layer2["size"] // 2
    assert _listing(podman.mount(v2), owners=False) == _listing(t2, owners=False)


def test_podman_pulls_a_chunked_layer_whole_without_the_legacy_names(
        lamina: Lamina, registry: DockerRegistry, podman: Podman, tmp_path: Path) -> None:
    """podman 4.3 knows only the pre-v1.44 annotation names: without them (a manifest as
    containers/storage writes today) it pulls the whole blob, and gets the tree, owners
    and mtimes too."""
    repo = "podman/whole"
    ref = f"{registry.host}/{repo}:v1"
    tree = _tree(tmp_path / "v1")
    lamina.run("import", "--compression", "zstd:chunked", ref, tree)
    lamina.run("push", ref)
    layer, _ = _layer(lamina, ref)
    url = f"http://{registry.host}/v2/{repo}/manifests/"
    oci = "application/vnd.oci.image.manifest.v1+json"
    with urllib.request.urlopen(urllib.request.Request(url + "v1", headers={
            "Accept": oci})) as r:
        manifest = json.load(r)
    for key in (LEGACY_CHECKSUM_ANNOTATION, LEGACY_POSITION_ANNOTATION):
        del manifest["layers"][0]["annotations"][key]
    urllib.request.urlopen(urllib.request.Request(
        url + "new-names", data=json.dumps(manifest).encode(), method="PUT",
        headers={"Content-Type": oci})).close()
    since = registry.log.stat().st_size
    log = podman.pull(f"{registry.host}/{repo}:new-names")
    assert _blob_gets(registry, since, repo, layer["digest"]) == [(200, layer["size"])], \
        log[-3000:]
    assert _listing(podman.mount(ref.replace(":v1", ":new-names")), owners=True) == \
        _listing(tree, owners=True)
