"""docker save archives (classic and Docker >= 25 OCI-based), read and written, checked
against real tar files and the real skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from lamina.digest import Digest
from lamina.errors import (
    IntegrityError,
    InvalidInput,
    InvalidManifest,
    NotFound,
    UnsafeArchive,
    Unsupported,
)
from lamina.image import mediatypes as mt
from lamina.image.config import History, ImageConfig, build_config
from lamina.image.manifest import Descriptor, Manifest, build_manifest, current_platform, dumps
from lamina.transport.base import ImageSink, ImageSource, NamedImage, read_blob
from lamina.transport.copy import copy_image
from lamina.transport.docker_archive import (
    DockerArchiveSink,
    DockerArchiveSource,
    is_docker_archive,
)
from lamina.transport.filetree import DirTree, TarTree
from lamina.transport.oci_layout import OciLayoutSink, OciLayoutSource
from lamina.transport.resolve import resolve_image

# --------------------------------------------------------------------------- helpers


def need(tool: str) -> str:
    """The path of a peer tool; a missing one fails under CI (never a silent skip)."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required in CI but is not installed")
        pytest.skip(f"{tool} not installed")
    return path


def run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def sha(data: bytes) -> Digest:
    return Digest.from_bytes(data)


@dataclass
class Img:
    manifest: Manifest
    config: ImageConfig
    tars: list[bytes]                  # uncompressed layer tars
    blobs: dict[Digest, bytes]

    @property
    def desc(self) -> Descriptor:
        return self.manifest.descriptor()


def make_image(layers: list[dict[str, bytes]], compression: str = "none",
               cmd: str = "sh") -> Img:
    tars = [make_tar(files) for files in layers]
    blobs = [compress(t, compression) for t in tars]
    config = build_config(
        [sha(t) for t in tars],
        [History(created="2024-01-01T00:00:00Z", created_by=f"layer {i}")
         for i in range(len(tars))],
        current_platform(),
        created="2024-01-01T00:00:00Z",
        container_config={"Cmd": [cmd]},
    )
    config_desc = Descriptor(mt.OCI_CONFIG, config.digest, len(config.raw))
    layer_descs = [Descriptor(mt.layer_media_type(compression), sha(b), len(b)) for b in blobs]
    manifest = build_manifest(config_desc, layer_descs)
    all_blobs = {config.digest: config.raw} | {sha(b): b for b in blobs}
    return Img(manifest, config, tars, all_blobs)


BASE = {"etc/os-release": b"NAME=test\n", "bin/sh": b"#!shell\n"}
SERVER = {"usr/bin/httpd": b"httpd binary\n"}


def image_a(compression: str = "none") -> Img:
    return make_image([BASE, SERVER, {"www/index.html": b"A\n"}], compression, "a")


def image_b(compression: str = "none") -> Img:
    return make_image([BASE, SERVER, {"www/index.html": b"B\n"}], compression, "b")


def put_image(sink: ImageSink, img: Img, names: list[str]) -> None:
    for d in img.manifest.blobs():
        if not sink.has_blob(d):
            sink.put_blob(d, io.BytesIO(img.blobs[d.digest]))
    sink.put_manifest(img.desc, img.manifest.raw, names)


def write_layout(path: Path, images: list[tuple[Img, list[str]]]) -> Path:
    sink = OciLayoutSink.to_dir(path)
    for img, names in images:
        put_image(sink, img, names)
    sink.close()
    return path


def copy_all(source: ImageSource, sink: ImageSink) -> None:
    try:
        for named in source.images():
            copy_image(source, named.descriptor, sink, [named.name] if named.name else [])
        sink.close()
    except BaseException:
        sink.abort()
        raise


def to_archive(tmp: Path, images: list[tuple[Img, list[str]]], oci: bool = False,
               as_dir: bool = False, name: str = "out") -> Path:
    layout = write_layout(tmp / f"{name}-layout", images)
    src = OciLayoutSource.open(layout)
    dest = tmp / (name if as_dir else f"{name}.tar")
    sink = DockerArchiveSink.to_dir(dest, oci) if as_dir else DockerArchiveSink.to_tar(dest, oci)
    try:
        copy_all(src, sink)
    finally:
        src.close()
    return dest


def untar(data: bytes) -> dict[str, bytes]:
    head = data[:4]
    if head[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif head == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


@dataclass
class Seen:
    config_digest: Digest
    diff_ids: tuple[Digest, ...]
    files: list[dict[str, bytes]]


def look(source: ImageSource, desc: Descriptor) -> Seen:
    """What an image really is: config id, diff_ids, files; every blob read verified."""
    r = resolve_image(source, desc)
    files = []
    for layer, diff_id in zip(r.manifest.layers, r.config.diff_ids, strict=True):
        blob = read_blob(source, layer)
        tar = untar(blob)
        raw = blob
        if blob[:2] == b"\x1f\x8b":
            raw = gzip.decompress(blob)
        elif blob[:4] == b"\x28\xb5\x2f\xfd":
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        assert sha(raw) == diff_id
        files.append(tar)
    return Seen(r.manifest.config.digest, r.config.diff_ids, files)


def expected(img: Img) -> Seen:
    return Seen(img.config.digest, img.config.diff_ids, [untar(t) for t in img.tars])


def write_members(path: Path, members: dict[str, bytes]) -> Path:
    """A tar with exactly these member names (no cleaning, for hostile archives)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def classic_members(img: Img, tags: list[str], legacy_names: bool = False,
                    layer_bytes: list[bytes] | None = None) -> dict[str, bytes]:
    """What docker save < 25 writes: <config hex>.json, <id>/layer.tar, manifest.json."""
    members: dict[str, bytes] = {f"{img.config.digest.encoded}.json": img.config.raw}
    names = []
    for i, tar in enumerate(img.tars):
        data = layer_bytes[i] if layer_bytes else tar
        name = (f"{hashlib.sha256(b'v1' + bytes([i])).hexdigest()}/layer.tar" if legacy_names
                else f"{sha(tar).encoded}.tar")
        if legacy_names:
            members[name.replace("layer.tar", "VERSION")] = b"1.0"
            members[name.replace("layer.tar", "json")] = b"{}"
        members[name] = data
        names.append(name)
    members["manifest.json"] = json.dumps([{
        "Config": f"{img.config.digest.encoded}.json", "RepoTags": tags, "Layers": names,
    }]).encode()
    return members


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("oci", [False, True], ids=["classic", "oci"])
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_round_trip_layout_archive_layout(tmp_path: Path, oci: bool, compression: str) -> None:
    img = image_a(compression)
    archive = to_archive(tmp_path, [(img, ["busybox:latest"])], oci=oci)
    assert archive.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "spool left behind"

    src = DockerArchiveSource.open(archive)
    try:
        images = src.images()
        assert [i.name for i in images] == ["docker.io/library/busybox:latest"]
        assert src.resolve(None) == images[0].descriptor
        assert src.resolve("busybox") == images[0].descriptor
        if oci:
            # the real manifest is served: its digest survives the trip
            assert images[0].descriptor.digest == img.manifest.digest
        assert look(src, images[0].descriptor) == expected(img)
        back = tmp_path / "back"
        copy_all(src, OciLayoutSink.to_dir(back))
    finally:
        src.close()
    layout = OciLayoutSource.open(back)
    try:
        [named] = layout.images()
        assert named.name == "docker.io/library/busybox:latest"
        assert look(layout, named.descriptor) == expected(img)
    finally:
        layout.close()


def test_classic_archive_shape(tmp_path: Path) -> None:
    img = image_a("gzip")
    archive = to_archive(tmp_path, [(img, ["busybox:latest", "localhost:5000/a/b:v1"])])
    members = untar(archive.read_bytes())
    entry = json.loads(members["manifest.json"])
    diff_hex = [d.encoded for d in img.config.diff_ids]
    assert entry == [{
        "Config": f"{img.config.digest.encoded}.json",
        "RepoTags": ["busybox:latest", "localhost:5000/a/b:v1"],
        "Layers": [f"{h}.tar" for h in diff_hex],
    }]
    # layers stored uncompressed, named by diff_id; the config byte for byte
    for tar, h in zip(img.tars, diff_hex, strict=True):
        assert members[f"{h}.tar"] == tar
    assert members[f"{img.config.digest.encoded}.json"] == img.config.raw
    assert json.loads(members["repositories"]) == {
        "busybox": {"latest": diff_hex[-1]}, "localhost:5000/a/b": {"v1": diff_hex[-1]},
    }


def test_oci_archive_shape_matches_docker_25(tmp_path: Path) -> None:
    img = image_a("gzip")
    archive = to_archive(tmp_path, [(img, ["busybox:latest"])], oci=True)
    members = untar(archive.read_bytes())
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads(members["manifest.json"])
    assert entry["Config"] == f"blobs/sha256/{img.config.digest.encoded}"
    assert entry["Layers"] == [f"blobs/sha256/{d.digest.encoded}" for d in img.manifest.layers]
    assert entry["RepoTags"] == ["busybox:latest"]
    index = json.loads(members["index.json"])
    [desc] = index["manifests"]
    assert desc["digest"] == str(img.manifest.digest)
    assert desc["annotations"] == {"io.containerd.image.name": "docker.io/library/busybox:latest",
                                   "org.opencontainers.image.ref.name": "latest"}
    assert members[f"blobs/sha256/{img.manifest.digest.encoded}"] == img.manifest.raw
    assert json.loads(members["repositories"]) == {
        "busybox": {"latest": img.config.diff_ids[-1].encoded}}


@pytest.mark.parametrize("oci", [False, True], ids=["classic", "oci"])
def test_directory_form(tmp_path: Path, oci: bool) -> None:
    img = image_a()
    out = to_archive(tmp_path, [(img, ["app:1"])], oci=oci, as_dir=True)
    assert (out / "manifest.json").is_file()
    assert is_docker_archive(DirTree(out))
    src = DockerArchiveSource.open(out)
    try:
        assert look(src, src.resolve("app:1")) == expected(img)
    finally:
        src.close()


def test_shared_layers_written_once(tmp_path: Path) -> None:
    a, b = image_a(), image_b()
    archive = to_archive(tmp_path, [(a, ["app:a"]), (b, ["app:b"])])
    members = untar(archive.read_bytes())
    layer_files = [n for n in members if n.endswith(".tar")]
    assert len(layer_files) == 4  # the 2 shared layers once, plus 1 of each image's own
    entries = json.loads(members["manifest.json"])
    assert [e["RepoTags"] for e in entries] == [["app:a"], ["app:b"]]
    assert entries[0]["Layers"][:2] == entries[1]["Layers"][:2]
    src = DockerArchiveSource.open(archive)
    try:
        assert look(src, src.resolve("app:a")) == expected(a)
        assert look(src, src.resolve("docker.io/library/app:b")) == expected(b)
        with pytest.raises(InvalidInput, match="holds 2 images"):
            src.resolve(None)
    finally:
        src.close()


def test_untagged_image_and_moved_tag(tmp_path: Path) -> None:
    a, b = image_a(), image_b()
    archive = tmp_path / "x.tar"
    sink = DockerArchiveSink.to_tar(archive)
    put_image(sink, a, ["app:latest"])
    put_image(sink, b, ["app:latest"])   # takes the tag over
    sink.close()
    src = DockerArchiveSource.open(archive)
    try:
        named = {(i.name, i.descriptor.digest) for i in src.images()}
        a_desc = [i for i in src.images() if i.name is None]
        assert len(named) == 2 and len(a_desc) == 1
        assert look(src, a_desc[0].descriptor) == expected(a)
        assert look(src, src.resolve("app")) == expected(b)
    finally:
        src.close()


def test_progress_is_reported(tmp_path: Path) -> None:
    from lamina.transport.copy import CopyEvent, CopyOptions

    img = image_a("gzip")
    layout = OciLayoutSource.open(write_layout(tmp_path / "layout", [(img, ["app:1"])]))
    events: list[CopyEvent] = []
    sink = DockerArchiveSink.to_tar(tmp_path / "x.tar")
    copy_image(layout, layout.resolve(None), sink, ["app:1"], CopyOptions(on_event=events.append))
    sink.close()
    layout.close()
    done = {e.descriptor.digest: e.done for e in events if e.kind == "progress"}
    assert {d.digest: d.size for d in img.manifest.layers}.items() <= done.items()


def test_reading_is_deterministic_and_writing_reproducible(tmp_path: Path) -> None:
    img = image_a("gzip")
    one = to_archive(tmp_path, [(img, ["app:1"])], name="one")
    two = to_archive(tmp_path, [(img, ["app:1"])], name="two")
    assert one.read_bytes() == two.read_bytes()
    digests = []
    for _ in range(2):
        src = DockerArchiveSource.open(one)
        digests.append(src.images()[0].descriptor.digest)
        src.close()
    assert digests[0] == digests[1]


# ------------------------------------------------------------- archives others wrote


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_read_handmade_classic_archive_with_legacy_names(tmp_path: Path, kind: str) -> None:
    img = image_a()
    members = classic_members(img, ["example.com/team/app:2"], legacy_names=True,
                              layer_bytes=[compress(t, kind) for t in img.tars])
    members["repositories"] = b'{"example.com/team/app": {"2": "x"}}'
    archive = write_members(tmp_path / "docker.tar", members)
    src = DockerArchiveSource.open(archive)
    try:
        [named] = src.images()
        assert named.name == "example.com/team/app:2"
        manifest = resolve_image(src, named.descriptor).manifest
        assert manifest.media_type == mt.OCI_MANIFEST
        assert manifest.config.media_type == mt.OCI_CONFIG
        assert {layer.media_type for layer in manifest.layers} == {mt.layer_media_type(kind)}
        if kind == "none":
            assert [x.digest for x in manifest.layers] == list(img.config.diff_ids)
        assert look(src, named.descriptor) == expected(img)
    finally:
        src.close()


def test_read_archive_with_symlinked_shared_layer(tmp_path: Path) -> None:
    a, b = image_a(), image_b()
    members = classic_members(a, ["app:a"], legacy_names=True)
    entries = json.loads(members.pop("manifest.json"))
    b_layers = [f"{'b' * 63}{k}/layer.tar" for k in range(3)]
    path = tmp_path / "sym.tar"
    with tarfile.open(path, "w") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for name, data in members.items():
            add(name, data)
        add(f"{b.config.digest.encoded}.json", b.config.raw)
        for k in range(2):  # the layers b shares with a are links to a's files
            link = tarfile.TarInfo(b_layers[k])
            link.type = tarfile.SYMTYPE
            link.linkname = f"../{entries[0]['Layers'][k]}"
            tf.addfile(link)
        add(b_layers[2], b.tars[2])
        entries.append({"Config": f"{b.config.digest.encoded}.json", "RepoTags": ["app:b"],
                        "Layers": b_layers})
        add("manifest.json", json.dumps(entries).encode())
    src = DockerArchiveSource.open(path)
    try:
        assert look(src, src.resolve("app:b")) == expected(b)
    finally:
        src.close()


def test_read_gzipped_archive(tmp_path: Path) -> None:
    """``docker save img | gzip > img.tar.gz``"""
    img = image_a()
    plain = write_members(tmp_path / "docker.tar", classic_members(img, ["app:1"]))
    gz = tmp_path / "docker.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    src = DockerArchiveSource.open(gz, tmpdir=scratch)
    try:
        assert look(src, src.resolve("app:1")) == expected(img)
    finally:
        src.close()
    assert list(scratch.iterdir()) == []


def _docker25_members(img: Img, index_annotations: dict[str, str],
                      repo_tags: list[str]) -> dict[str, bytes]:
    """What Docker >= 25 writes: an OCI layout plus manifest.json and repositories."""
    members = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        f"blobs/sha256/{img.manifest.digest.encoded}": img.manifest.raw,
    }
    for digest, data in img.blobs.items():
        members[f"blobs/sha256/{digest.encoded}"] = data
    desc = img.desc.to_json()
    if index_annotations:
        desc["annotations"] = index_annotations
    members["index.json"] = dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                   "manifests": [desc]})
    members["manifest.json"] = json.dumps([{
        "Config": f"blobs/sha256/{img.config.digest.encoded}",
        "RepoTags": repo_tags,
        "Layers": [f"blobs/sha256/{d.digest.encoded}" for d in img.manifest.layers],
    }]).encode()
    members["repositories"] = json.dumps(
        {"app": {"v1": img.config.diff_ids[-1].encoded}}).encode()
    return members


def test_read_docker25_archive(tmp_path: Path) -> None:
    img = image_a()
    members = _docker25_members(img, {"io.containerd.image.name": "docker.io/library/app:v1",
                                      "org.opencontainers.image.ref.name": "v1"}, ["app:v1"])
    archive = write_members(tmp_path / "d25.tar", members)
    src = DockerArchiveSource.open(archive)
    try:
        assert src.images() == [NamedImage("docker.io/library/app:v1", src.resolve("app:v1"))]
        assert src.resolve(None).digest == img.manifest.digest   # real manifest, preserved
        assert look(src, src.resolve(None)) == expected(img)
    finally:
        src.close()


def test_read_docker25_archive_names_from_repotags_and_untagged_extra(tmp_path: Path) -> None:
    img, other = image_a(), image_b()
    members = _docker25_members(img, {}, ["app:v1", "app:v2"])
    # an image saved by id: in manifest.json but without an index.json entry
    for digest, data in other.blobs.items():
        members[f"blobs/sha256/{digest.encoded}"] = data
    entries = json.loads(members["manifest.json"])
    entries.append({"Config": f"blobs/sha256/{other.config.digest.encoded}", "RepoTags": None,
                    "Layers": [f"blobs/sha256/{d.encoded}" for d in other.config.diff_ids]})
    members["manifest.json"] = json.dumps(entries).encode()
    src = DockerArchiveSource.open(write_members(tmp_path / "d25.tar", members))
    try:
        names = [i.name for i in src.images()]
        assert names == ["docker.io/library/app:v1", "docker.io/library/app:v2", None]
        assert src.resolve("app:v2").digest == img.manifest.digest
        untagged = src.images()[2].descriptor
        assert look(src, untagged) == expected(other)
    finally:
        src.close()


def test_is_docker_archive(tmp_path: Path) -> None:
    img = image_a()
    good = write_members(tmp_path / "good.tar", classic_members(img, []))
    layout = write_layout(tmp_path / "layout", [(img, ["x:1"])])
    bad = write_members(tmp_path / "bad.tar", {"manifest.json": b'{"Config": "x"}'})
    for path, want in ((good, True), (layout, False), (bad, False)):
        tree = TarTree(path) if path.is_file() else DirTree(path)
        try:
            assert is_docker_archive(tree) is want
        finally:
            tree.close()


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content", [b"{not json", b'{"Config": "a.json"}', b'[1]',
                                     b'[{"Config": "a.json"}]',
                                     b'[{"Config": "a.json", "Layers": [], "RepoTags": "x"}]'])
def test_malformed_manifest_json(tmp_path: Path, content: bytes) -> None:
    archive = write_members(tmp_path / "bad.tar", {"manifest.json": content})
    with pytest.raises(InvalidManifest, match=r"bad\.tar: manifest\.json"):
        DockerArchiveSource.open(archive)


def test_missing_layer_and_config_files(tmp_path: Path) -> None:
    img = image_a()
    members = classic_members(img, ["app:1"])
    layer = f"{img.config.diff_ids[1].encoded}.tar"
    del members[layer]
    with pytest.raises(NotFound, match=rf"layer file '{layer}'.*missing"):
        DockerArchiveSource.open(write_members(tmp_path / "a.tar", members))
    members = classic_members(img, ["app:1"])
    del members[f"{img.config.digest.encoded}.json"]
    with pytest.raises(NotFound, match=r"config file .*\.json.*missing"):
        DockerArchiveSource.open(write_members(tmp_path / "b.tar", members))


def test_layer_count_differs_from_diff_ids(tmp_path: Path) -> None:
    img = image_a()
    members = classic_members(img, ["app:1"])
    entries = json.loads(members["manifest.json"])
    entries[0]["Layers"].pop()
    members["manifest.json"] = json.dumps(entries).encode()
    with pytest.raises(InvalidManifest, match="lists 2 layers but its config .* has 3 diff_ids"):
        DockerArchiveSource.open(write_members(tmp_path / "a.tar", members))


def test_corrupt_layer_is_caught_when_copied(tmp_path: Path) -> None:
    img = image_a()
    out = to_archive(tmp_path, [(img, ["app:1"])], as_dir=True)
    victim = out / f"{img.config.diff_ids[2].encoded}.tar"
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF           # same size, different bytes
    victim.write_bytes(bytes(data))
    src = DockerArchiveSource.open(out)   # opening trusts the diff_id: no hashing pass
    dest = tmp_path / "dest"
    try:
        with pytest.raises(IntegrityError, match=img.config.diff_ids[2].encoded):
            copy_all(src, OciLayoutSink.to_dir(dest))
    finally:
        src.close()
    assert not dest.exists()


@pytest.mark.parametrize("where", ["manifest", "member"])
def test_dotdot_names_are_refused(tmp_path: Path, where: str) -> None:
    img = image_a()
    members = classic_members(img, ["app:1"])
    if where == "manifest":
        entries = json.loads(members["manifest.json"])
        entries[0]["Layers"][0] = "../../etc/passwd"
        members["manifest.json"] = json.dumps(entries).encode()
    else:
        members["../escape"] = b"x"
    with pytest.raises(UnsafeArchive, match="climbs out"):
        DockerArchiveSource.open(write_members(tmp_path / "a.tar", members))


def test_pre_1_10_archive_is_unsupported(tmp_path: Path) -> None:
    archive = write_members(tmp_path / "old.tar", {"repositories": b"{}", "abc/json": b"{}"})
    with pytest.raises(Unsupported, match="older than 1.10"):
        DockerArchiveSource.open(archive)


def test_sink_refuses_layer_not_matching_diff_id(tmp_path: Path) -> None:
    img = image_a("gzip")
    # a config that claims other content for the top layer
    wrong = make_image([BASE, SERVER, {"www/index.html": b"not A\n"}], "gzip")
    manifest = build_manifest(wrong.manifest.config, img.manifest.layers)
    blobs = img.blobs | wrong.blobs
    out = tmp_path / "x.tar"
    sink = DockerArchiveSink.to_tar(out)
    with pytest.raises(IntegrityError, match="no diff_id of the image config"):
        try:
            for d in manifest.blobs():
                if not sink.has_blob(d):
                    sink.put_blob(d, io.BytesIO(blobs[d.digest]))
            sink.put_manifest(manifest.descriptor(), manifest.raw, ["app:1"])
        except BaseException:
            sink.abort()
            raise
    assert list(tmp_path.iterdir()) == []


def test_sink_refuses_bytes_not_matching_digest(tmp_path: Path) -> None:
    img = image_a("gzip")
    layer = img.manifest.layers[0]
    sink = DockerArchiveSink.to_tar(tmp_path / "x.tar")
    sink.put_blob(img.manifest.config, io.BytesIO(img.config.raw))
    bad = compress(make_tar({"etc/os-release": b"NAME=evil\n"}), "gzip")
    with pytest.raises(IntegrityError):
        sink.put_blob(layer, io.BytesIO(bad))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_sink_refuses_index(tmp_path: Path) -> None:
    from lamina.image.manifest import build_index

    img = image_a()
    index = build_index([img.desc])
    sink = DockerArchiveSink.to_tar(tmp_path / "x.tar")
    put_image(sink, img, [])
    with pytest.raises(Unsupported, match="one platform per image"):
        sink.put_manifest(index.descriptor(), index.raw, ["app:1"])
    sink.abort()


# --------------------------------------------------------------------------- skopeo


@pytest.mark.parametrize("oci", [False, True], ids=["classic", "oci"])
def test_skopeo_inspects_lamina_archive(tmp_path: Path, oci: bool) -> None:
    skopeo = need("skopeo")
    img = image_a("gzip")
    archive = to_archive(tmp_path, [(img, ["busybox:latest"])], oci=oci)
    info = json.loads(run(skopeo, "inspect", f"docker-archive:{archive}"))
    assert len(info["Layers"]) == 3
    assert info["Architecture"] == img.config.platform.architecture
    assert info["Os"] == "linux"
    if not oci:
        # uncompressed layers: skopeo reports their digests, which are the diff_ids
        assert info["Layers"] == [str(d) for d in img.config.diff_ids]
    config = subprocess.run([skopeo, "inspect", "--config", "--raw",
                             f"docker-archive:{archive}"], capture_output=True, check=True).stdout
    assert sha(config) == img.config.digest   # the image id is preserved


@pytest.mark.parametrize("oci", [False, True], ids=["classic", "oci"])
def test_skopeo_copies_lamina_archive(tmp_path: Path, oci: bool) -> None:
    skopeo = need("skopeo")
    img = image_a("gzip")
    archive = to_archive(tmp_path, [(img, ["busybox:latest"])], oci=oci)
    dest = tmp_path / "skopeo-layout"
    run(skopeo, "copy", "--quiet", f"docker-archive:{archive}", f"oci:{dest}:mytag")
    layout = OciLayoutSource.open(dest)
    try:
        seen = look(layout, layout.resolve("mytag"))
        assert seen == expected(img)
    finally:
        layout.close()


def test_lamina_reads_skopeo_archive(tmp_path: Path) -> None:
    skopeo = need("skopeo")
    img = image_a("gzip")
    layout = write_layout(tmp_path / "layout", [(img, ["busybox:latest"])])
    archive = tmp_path / "skopeo.tar"
    run(skopeo, "copy", "--quiet", f"oci:{layout}:latest",
        f"docker-archive:{archive}:example.com/team/app:v3")
    src = DockerArchiveSource.open(archive)
    try:
        [named] = src.images()
        assert named.name == "example.com/team/app:v3"
        r = resolve_image(src, named.descriptor)
        assert r.manifest.config.digest == img.config.digest
        assert look(src, named.descriptor) == expected(img)
    finally:
        src.close()
