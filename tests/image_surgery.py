"""Making bad images on purpose: a small good OCI layout, then its config, layers or
manifest replaced, with every digest and size that names them rewritten so that only the
replaced part is wrong."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina_testing import Lamina, tar_bytes


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def small_layout(tmp_path: Path, name: str = "demo/x") -> Path:
    """An OCI layout of a two-layer image (gzip layers), made in a scratch store."""
    scratch = Lamina(tmp_path / "scratch-store", tmp_path)
    base, top = tmp_path / "tree-base", tmp_path / "tree-top"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "os").write_text("base\n")
    (top / "srv").mkdir(parents=True)
    (top / "srv" / "page").write_text("hello\n")
    scratch.run("import", name, base, top)
    out = tmp_path / "layout"
    scratch.run("save", name, "-o", out, "--format", "oci")
    return out


class Layout:
    """The one image of an OCI layout directory, to be edited in place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index = json.loads((root / "index.json").read_text())
        self.manifest = json.loads(self.blob(self.index["manifests"][0]["digest"]).read_text())
        self.config = json.loads(self.blob(self.manifest["config"]["digest"]).read_text())

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def layer_bytes(self, i: int) -> bytes:
        return self.blob(self.manifest["layers"][i]["digest"]).read_bytes()

    def put(self, data: bytes) -> tuple[str, int]:
        digest = sha256(data)
        self.blob(digest).write_bytes(data)
        return digest, len(data)

    def set_layer(self, i: int, data: bytes, media_type: str | None = None) -> None:
        digest, size = self.put(data)
        self.manifest["layers"][i].update(digest=digest, size=size)
        if media_type is not None:
            self.manifest["layers"][i]["mediaType"] = media_type

    def write(self, config_raw: bytes | None = None, manifest_raw: bytes | None = None) -> None:
        """Write config, manifest and index.json back (raw bytes, when given, replace
        the serialised documents)."""
        digest, size = self.put(config_raw or json.dumps(self.config).encode())
        self.manifest["config"].update(digest=digest, size=size)
        digest, size = self.put(manifest_raw or json.dumps(self.manifest).encode())
        self.index["manifests"][0].update(digest=digest, size=size)
        (self.root / "index.json").write_text(json.dumps(self.index))


def edit_layout(root: Path, edit: Callable[[Layout], Any]) -> Layout:
    layout = Layout(root)
    edit(layout)
    layout.write()
    return layout


def deep(levels: int) -> str:
    """A JSON array nested ``levels`` deep."""
    return "[" * levels + "]" * levels


def with_deep_value(doc: dict[str, Any], levels: int = 100_000) -> bytes:
    """``doc`` serialised with one more key holding a ``levels``-deep array."""
    raw = json.dumps(doc)
    return (raw[:-1] + f', "x-deep": {deep(levels)}}}').encode()


def layer(members: list[tuple[str, bytes | None]]) -> tuple[bytes, str]:
    """A gzip layer of ``members`` and its diff_id."""
    tar = tar_bytes(members)
    return gzip.compress(tar, mtime=0), sha256(tar)


def docker_archive_dir(lamina: Lamina, ref: str, where: Path) -> Path:
    """``lamina save`` (classic docker-archive) of ``ref``, unpacked into a directory."""
    archive = where.with_suffix(".tar")
    lamina.run("save", ref, "-o", archive)
    where.mkdir()
    with tarfile.open(archive) as tf:
        tf.extractall(where, filter="data")
    return where


def bomb_layer(kind: str, zeros: int) -> tuple[bytes, str]:
    """A layer holding one file of ``zeros`` zero bytes, compressed with ``kind`` (gzip
    or zstd): a few kB that expand ~1000×.  Returns the blob and its diff_id."""
    import io

    import zstandard

    head = tarfile.TarInfo("zeros")
    head.size = zeros
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(head, io.BytesIO(bytes(zeros)))
    tar = raw.getvalue()
    if kind == "gzip":
        return gzip.compress(tar, mtime=0), sha256(tar)
    return zstandard.ZstdCompressor(level=3).compress(tar), sha256(tar)


def record_unchecked(store_root: Path, img: Layout, config_raw: bytes, ref: str) -> str:
    """Put the layout's layers and ``config_raw`` in a store and record the image under
    ``ref`` through the library, without any load or pull check — as a registry push to
    ``lamina serve`` (a registry keeps what it is given) or an older lamina recorded
    images.  Returns the manifest digest."""
    from lamina.digest import Digest
    from lamina.image import mediatypes as mt
    from lamina.image.manifest import Descriptor
    from lamina.store.store import Store
    from lamina.transport.local import record_image

    with Store(store_root) as store, store.lease() as lease:
        layers = []
        for d in img.manifest["layers"]:
            data = img.blob(d["digest"]).read_bytes()
            digest = Digest.parse(d["digest"])
            lease.add(digest)
            store.blobs.put_bytes(data, digest)
            layers.append(Descriptor(d["mediaType"], digest, len(data)))
        _, manifest = record_image(store, lease, config_raw, mt.OCI_CONFIG, layers, [ref])
    return str(manifest.digest)
