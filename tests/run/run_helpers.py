"""Helpers for the run tests: crafted images in a store, layer listings, leak checks."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import zstandard

from lamina.digest import Digest
from lamina.image import mediatypes as mt
from lamina.image.config import History, build_config
from lamina.image.manifest import Descriptor, build_manifest, current_platform
from lamina.store.store import Store

IS_ROOT = os.geteuid() == 0


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
          uid: int = 0, gid: int = 0, mtime: int = 1_600_000_000,
          linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = linkname
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    return info, data


def make_tar(entries: Iterable[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def store_image(store: Store, tag: str, tars: list[bytes], container_config: dict[str, object]
                | None = None, zstd: bool = False) -> Descriptor:
    """Record an image made of the given uncompressed layer tars (gzipped here, or
    zstd-compressed)."""
    layers, diff_ids = [], []
    media_type = mt.OCI_LAYER_ZSTD if zstd else mt.OCI_LAYER_GZIP
    for raw in tars:
        blob = (zstandard.ZstdCompressor().compress(raw) if zstd
                else gzip.compress(raw, mtime=0))
        digest = store.blobs.put_bytes(blob)
        diff_id = Digest.from_bytes(raw)
        store.meta.add_layer(str(digest), str(diff_id), media_type, len(blob))
        layers.append(Descriptor(media_type, digest, len(blob)))
        diff_ids.append(diff_id)
    config = build_config(diff_ids, [History(created_by=f"layer {i}") for i in range(len(tars))],
                          current_platform(), created="2024-01-01T00:00:00Z",
                          container_config=dict(container_config or {}))
    store.blobs.put_bytes(config.raw)
    manifest = build_manifest(Descriptor(mt.OCI_CONFIG, config.digest, len(config.raw)),
                              layers)
    store.blobs.put_bytes(manifest.raw)
    from lamina.image.reference import Reference

    store.meta.add_image(str(manifest.digest), manifest.media_type, len(manifest.raw),
                         [str(d.digest) for d in manifest.blobs()],
                         tag=str(Reference.parse(tag)))
    return manifest.descriptor()


def layer_members(blob: Path) -> list[tuple[str, str, int, int, int, bytes]]:
    """(name, type, mode, uid, gid, data) of every entry in a (gzipped) layer blob."""
    out = []
    with tarfile.open(blob, "r:*") as tar:
        for m in tar:
            data = tar.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            out.append((m.name, m.type.decode(), m.mode, m.uid, m.gid, data))
    return out


def store_mounts(root: Path) -> list[str]:
    """Mount points in this namespace that lie inside the store."""
    prefix = os.path.realpath(root)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def assert_no_leftovers(root: Path) -> None:
    """Nothing mounted in the store, nothing left in its tmp area, no live lease."""
    assert store_mounts(root) == []
    tmp = root / "tmp"
    assert not tmp.exists() or sorted(os.listdir(tmp)) == [], sorted(os.listdir(tmp))
    with Store(root) as store:
        assert store.meta.leases() == []
