"""Images for the rebase and squash tests: an app built on base v1 or v2, and images
made of hand-written layers (tars by Python's tarfile, an independent writer) as OCI
layouts lamina loads, with whiteouts, opaque directories and hard links exactly where a
test wants them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

from lamina_testing import Lamina

BASE = "docker.io/library/base"
CONTAINERFILE = """FROM {base}
ENV APP=1
COPY app.conf /etc/app.conf
COPY main /app/main
CMD ["/app/main"]
"""

# (name, kind, payload): kind "file" (bytes), "dir" (None), "link" (hard link target),
# "sym" (symlink target), "wh" (a whiteout file: name is the .wh. path), "opq" (name is
# the directory whose lower contents are hidden).
Member = tuple[str, str, Any]


# The squash tests' image: a lower layer, then a range with adds, overwrites, deletes,
# opaque dirs and hard links.
LOWER: list[Member] = [
    ("a", "dir", None), ("a/x", "file", b"x1"), ("a/y", "file", b"y1"),
    ("o", "dir", None), ("o/1", "file", b"one"), ("o/2", "file", b"two"),
    ("keep", "file", b"keep1"), ("lowdel", "file", b"lower, deleted above"),
    ("r", "dir", None), ("r/f", "file", b"under r"),
    ("shared", "file", b"a file the range links to"),
]
RANGE: list[list[Member]] = [
    [   # 2: adds, an overwrite, a whiteout of a lower file, an opaque dir, hard links
        ("h", "dir", None), ("h/orig", "file", b"orig"), ("h/link", "link", "h/orig"),
        ("keep", "file", b"keep2"), ("n", "dir", None), ("n/new1", "file", b"new1"),
        ("o", "dir", None), ("o", "opq", None), ("o/3", "file", b"three"),
        ("tmp", "file", b"added, then deleted"), (".wh.lowdel", "wh", None),
        ("lnk", "link", "shared"),
    ],
    [   # 3: a delete inside the range, an overwrite under a hard link, a dir made a file
        (".wh.tmp", "wh", None), ("h", "dir", None), ("h/orig", "file", b"changed"),
        ("h/l2", "link", "h/link"), ("r", "file", b"r is a file now"),
        ("sym", "sym", "a/x"),
    ],
    [   # 4: the file a dir again, a delete of something the range added, more files
        ("r", "dir", None), ("r/g", "file", b"new r"), ("n", "dir", None),
        ("n/.wh.new1", "wh", None), ("a", "dir", None), ("a/z", "file", b"z"),
        ("o", "dir", None), ("o/4", "file", b"four"), ("a/.wh.y", "wh", None),
    ],
]


def layer_tar(members: list[Member], mtime: int = 1600000000) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            if kind == "opq":
                name, kind, payload = f"{name.rstrip('/')}/.wh..wh..opq", "file", b""
            if kind == "wh":
                kind, payload = "file", b""
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "file":
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "link":
                info.type, info.linkname, info.mode = tarfile.LNKTYPE, payload, 0o644
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            else:
                raise ValueError(kind)
    return raw.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layout(root: Path, layers: list[list[Member]], name: str = "test/img:latest",
                 history: list[dict[str, Any]] | None = None,
                 config_extra: dict[str, Any] | None = None, as_index: bool = False) -> Path:
    """An OCI layout of one image with these layers (gzip), tagged ``name`` (with
    ``as_index``: an image index naming it for linux/amd64)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = sha256(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest, len(data)

    descs, diff_ids = [], []
    for members in layers:
        tar = layer_tar(members)
        digest, size = put(gzip.compress(tar, mtime=0))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": digest, "size": size})
        diff_ids.append(sha256(tar))
    config = {"created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
              "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": history if history is not None else [
                  {"created": "2023-11-14T22:13:20Z", "created_by": f"layer {i + 1}"}
                  for i in range(len(layers))],
              **(config_extra or {})}
    cdigest, csize = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cdigest, "size": csize}, "layers": descs}
    mdigest, msize = put(json.dumps(manifest).encode())
    top = "application/vnd.oci.image.manifest.v1+json"
    if as_index:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": top, "digest": mdigest, "size": msize,
                                "platform": {"architecture": "amd64", "os": "linux"}}]}
        top = index["mediaType"]
        mdigest, msize = put(json.dumps(index).encode())
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": top, "digest": mdigest,
            "size": msize, "annotations": {"io.containerd.image.name": name,
                                           "org.opencontainers.image.ref.name": "latest"}}]}))
    return root


def layer_members(blob: bytes) -> list[tuple[str, str]]:
    """(name, type) of every member of a (gzip) layer, in order."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        return [(m.name, m.type.decode()) for m in tar.getmembers()]


def inodes(root: Path) -> dict[str, frozenset[str]]:
    """For each regular file with links, the set of paths sharing its inode."""
    groups: dict[tuple[int, int], set[str]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), set()).add(
                    os.path.relpath(p, root))
    return {p: frozenset(g) for g in groups.values() for p in g}


def make_bases(work: Path) -> tuple[Path, Path]:
    """Base v1 and v2: v2 changes a file the app does not touch (os-release) and one it
    overwrites (app.conf), and adds one."""
    v1, v2 = work / "v1", work / "v2"
    for root, tag in ((v1, "v1"), (v2, "v2")):
        (root / "etc").mkdir(parents=True)
        (root / "bin").mkdir()
        (root / "etc" / "os-release").write_text(f"base {tag}\n")
        (root / "etc" / "app.conf").write_text(f"conf of base {tag}\n")
        (root / "bin" / "sh").write_text("#!shell\n")
    (v2 / "bin" / "tool").write_text("only in v2\n")
    return v1, v2


def build_app(lamina: Lamina, work: Path, base: str, tag: str) -> None:
    ctx = work / "ctx"
    if not ctx.exists():
        ctx.mkdir()
        (ctx / "app.conf").write_text("the app's own conf\n")
        (ctx / "main").write_text("#!the app\n")
    (ctx / f"Containerfile.{tag}").write_text(CONTAINERFILE.format(base=base))
    lamina.run("build", "-f", ctx / f"Containerfile.{tag}", "-t", f"app:{tag}", ctx)
