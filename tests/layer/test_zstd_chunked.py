"""zstd:chunked layers (issue 11, item 1): lamina writes them deterministically, every
zstd reader sees the plain tar, the TOC and tar-split describe it exactly, and lamina
reads skopeo's."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from chunked_helpers import check_spans, chunked_layer, inflate, read_toc, rebuild_tar, sha
from layer_helpers import IS_ROOT, apply_bytes, layer_bytes, snapshot

from lamina.image import mediatypes as mt
from lamina.layer import LayerOptions, diff_trees, write_tree
from lamina.layer import zstdchunked as zc
from lamina.layer.chunkedwriter import CHUNK_MAX, CHUNK_MIN
from lamina_testing import Lamina, need


def sh(*args: str | Path) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def big_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_tree(root: Path) -> Path:
    """Every kind of entry a layer carries, with metadata that must survive."""
    root.mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n" * 50)
    if IS_ROOT:
        os.chown(root / "bin" / "tool", 1234, 5678)  # before chmod: chown clears setuid
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-hard")
    os.symlink("tool", root / "bin" / "tool-soft")
    os.setxattr(root / "bin" / "tool", "user.origin", b"lamina\x00\xff")
    (root / "empty").write_bytes(b"")
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "utf8-é").write_text("é")
    (root / ("l" * 120)).mkdir()
    (root / ("l" * 120) / ("f" * 150)).write_bytes(b"long name\n")
    os.mkfifo(root / "pipe")
    # big enough to be cut in several chunks, with text-like and random parts
    (root / "big").write_bytes(big_bytes(5 << 20, 1) + b"hello world\n" * 300_000)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (1_600_000_000, 1_600_000_000),
                     follow_symlinks=False)
    os.utime(root, (1_600_000_000, 1_600_000_000))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("chunked") / "tree")


@pytest.fixture(scope="module")
def layer(tree: Path) -> tuple[bytes, object]:
    return chunked_layer(tree)


def test_same_tree_same_bytes_whatever_the_threads(tree: Path, tmp_path: Path) -> None:
    blob1, info1 = chunked_layer(tree, threads=1)
    again = make_tree(tmp_path / "again")  # the same tree made anew elsewhere
    blob2, info2 = chunked_layer(again, threads=4)
    assert sha(blob1) == sha(blob2)
    assert info1.annotations == info2.annotations
    # the tar inside is lamina's ordinary tar: the same diff_id as a gzip layer's
    _, gz = layer_bytes(diff_trees(None, tree), LayerOptions(compression="gzip"))
    assert info1.diff_id == gz.diff_id
    assert info1.compression == "zstd:chunked"


def test_annotations_and_footer_agree(layer: tuple[bytes, object]) -> None:
    blob, info = layer
    ann = info.annotations  # type: ignore[attr-defined]
    assert set(ann) == {zc.CHECKSUM_ANNOTATION, zc.POSITION_ANNOTATION, zc.TAR_SPLIT_ANNOTATION,
                        zc.LEGACY_CHECKSUM_ANNOTATION, zc.LEGACY_POSITION_ANNOTATION}
    # containers/storage <= v1.43 (podman 4.3) reads the same values under its old names
    assert ann[zc.LEGACY_CHECKSUM_ANNOTATION] == ann[zc.CHECKSUM_ANNOTATION]
    assert ann[zc.LEGACY_POSITION_ANNOTATION] == ann[zc.POSITION_ANNOTATION]
    footer = zc.read_footer(blob[-zc.FOOTER_SIZE:])
    assert not footer.legacy and footer.size == zc.FOOTER_SIZE
    assert zc.toc_location(ann) == footer.location
    assert blob[-8:] == b"GNUlInUx"
    assert zc.annotations_from_blob(lambda off, n: blob[off : off + n], len(blob)) == ann


def test_zstd_and_tar_list_it(layer: tuple[bytes, object], tmp_path: Path) -> None:
    zstd, tar = need("zstd"), need("tar")
    blob, _ = layer
    path = tmp_path / "layer.tar.zst"
    path.write_bytes(blob)
    plain = subprocess.run([zstd, "-dc", path], capture_output=True, check=True).stdout
    names = subprocess.run([tar, "-t"], input=plain, capture_output=True,
                           check=True).stdout.decode().splitlines()
    assert {"big", "bin/", "bin/tool", "bin/tool-hard", "empty", "pipe", "utf8-é"} <= set(names)
    assert len(names) == 11


def test_tree_round_trips_exactly(tree: Path, layer: tuple[bytes, object],
                                  tmp_path: Path) -> None:
    blob, info = layer
    result = apply_bytes(blob, tmp_path / "out")
    assert result.diff_id == info.diff_id  # type: ignore[attr-defined]
    assert snapshot(tmp_path / "out") == snapshot(tree)
    out = tmp_path / "out" / "bin"
    assert os.stat(out / "tool").st_ino == os.stat(out / "tool-hard").st_ino


def test_whiteouts_round_trip(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "gone-dir").mkdir(parents=True)
    (lower / "gone-dir" / "x").write_text("x")
    (lower / "gone").write_text("bye")
    (lower / "opaque").mkdir()
    (lower / "opaque" / "old").write_text("old")
    (lower / "keep").write_text("keep")
    upper = tmp_path / "upper"
    shutil.copytree(lower, upper)
    shutil.rmtree(upper / "gone-dir")
    os.unlink(upper / "gone")
    shutil.rmtree(upper / "opaque")
    (upper / "opaque").mkdir()
    (upper / "opaque" / "new").write_text("new")
    cs = diff_trees(lower, upper)
    blob, info = layer_bytes(cs, LayerOptions(compression="zstd:chunked"))
    names = [e.name for e in read_toc(blob, dict(info.annotations)).entries]
    assert ".wh.gone" in names and ".wh.gone-dir" in names
    target = tmp_path / "target"
    shutil.copytree(lower, target)
    apply_bytes(blob, target)
    assert snapshot(target) == snapshot(upper)


def test_toc_describes_the_files(tree: Path, layer: tuple[bytes, object]) -> None:
    blob, info = layer
    toc = read_toc(blob, dict(info.annotations))  # type: ignore[attr-defined]
    by_name = {e.name: e for e in toc.entries}
    tool = by_name["bin/tool"]
    assert tool.type == "reg" and tool.mode == 0o4755 and tool.mtime == 1_600_000_000
    assert tool.digest == sha((tree / "bin" / "tool").read_bytes())
    assert dict(tool.xattrs) == {"user.origin": b"lamina\x00\xff"}
    if IS_ROOT:
        assert (tool.uid, tool.gid) == (1234, 5678)
    assert by_name["bin/tool-hard"].type == "hardlink"
    assert by_name["bin/tool-hard"].link_name == "bin/tool"
    assert by_name["bin/tool-soft"].type == "symlink"
    assert by_name["bin/tool-soft"].link_name == "tool"
    assert by_name["bin/"].type == "dir" and by_name["sticky/"].mode == 0o1777
    assert by_name["empty"].chunks == () and by_name["empty"].digest is None
    assert by_name["pipe"].type == "fifo"
    assert by_name["l" * 120 + "/" + "f" * 150].digest == sha(b"long name\n")
    for e in toc.entries:
        if e.type == "reg" and e.size:
            path = tree / e.name
            assert e.digest == sha(path.read_bytes())
    big = by_name["big"]
    assert len(big.chunks) >= 2
    assert all(CHUNK_MIN <= c.chunk_size <= CHUNK_MAX for c in big.chunks[:-1])
    # the writer's own spans are the reader's (what a chunk store cuts the blob at)
    assert list(info.spans) == check_spans(blob, toc)  # type: ignore[attr-defined]


def test_tar_split_rebuilds_the_exact_tar(tree: Path, layer: tuple[bytes, object]) -> None:
    blob, info = layer
    toc = read_toc(blob, dict(info.annotations))  # type: ignore[attr-defined]
    loc = toc.location
    tar_split = zc.parse_tar_split(
        blob[loc.tar_split_offset : loc.tar_split_offset + loc.tar_split_length], toc)
    files = {e.name: (tree / e.name).read_bytes() for e in toc.entries
             if e.type == "reg" and e.size}
    plain = b"".join(inflate(blob[s : s + n]) for s, n in zc.frame_spans(toc, len(blob))
                     if s < loc.offset - 8)
    assert rebuild_tar(tar_split, files) == plain
    assert sha(plain) == str(info.diff_id)  # type: ignore[attr-defined]


def test_chunks_follow_content_not_position(tmp_path: Path) -> None:
    """An insertion near the start of a big file moves the cuts with the content: the
    chunks after it are the same frames."""
    body = big_bytes(20 << 20, 7)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_bytes(body)
    (b / "f").write_bytes(b"a few new bytes" + body)
    chunks = []
    for root in (a, b):
        blob, info = chunked_layer(root)
        toc = read_toc(blob, dict(info.annotations))
        entry = next(e for e in toc.entries if e.name == "f")
        chunks.append([(c.chunk_digest, blob[c.offset : c.end_offset]) for c in entry.chunks])
    assert len(chunks[0]) >= 4
    shared = {d for d, _ in chunks[0]} & {d for d, _ in chunks[1]}
    assert len(shared) >= len(chunks[0]) - 1
    frames0 = dict(chunks[0])
    assert all(frames0[d] == f for d, f in chunks[1] if d in shared)  # byte-identical frames


def test_umoci_unpacks_a_lamina_chunked_image(lamina: Lamina, tree: Path,
                                              tmp_path: Path) -> None:
    umoci, zstd = need("umoci"), need("zstd")
    lamina.run("import", "--compression", "zstd:chunked", "ck/app:v1", tree)
    layout = tmp_path / "layout"
    lamina.run("save", "--format", "oci", "-o", layout, "ck/app:v1")
    rootless = [] if IS_ROOT else ["--rootless"]
    unpack = [umoci, "unpack", *rootless, "--image", f"{layout}:v1", tmp_path / "bundle"]
    proc = subprocess.run([str(a) for a in unpack], capture_output=True, text=True)
    if proc.returncode != 0:
        # umoci before 0.5 (Debian 12 ships 0.4.7) knows no +zstd media type at all, for
        # any zstd layer.  What it would do with one is inflate it with a zstd reader:
        # give it exactly that, the `zstd -d` of lamina's blob as a plain tar layer.
        assert "not correct mediatype: application/vnd.oci.image.layer.v1.tar+zstd" \
            in proc.stderr, proc.stderr
        _inflate_layers_in_layout(layout, zstd)
        sh(*unpack)
    assert snapshot(tmp_path / "bundle" / "rootfs") == snapshot(tree)


def _inflate_layers_in_layout(layout: Path, zstd: str) -> None:
    blobs = layout / "blobs" / "sha256"
    top = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / top["manifests"][0]["digest"].split(":")[1]).read_text())
    for layer in manifest["layers"]:
        plain = subprocess.run([zstd, "-dc", blobs / layer["digest"].split(":")[1]],
                               capture_output=True, check=True).stdout
        (blobs / sha(plain).split(":")[1]).write_bytes(plain)
        layer.update(mediaType="application/vnd.oci.image.layer.v1.tar", digest=sha(plain),
                     size=len(plain))
        del layer["annotations"]
    raw = json.dumps(manifest).encode()
    (blobs / sha(raw).split(":")[1]).write_bytes(raw)
    top["manifests"][0].update(digest=sha(raw), size=len(raw))
    (layout / "index.json").write_text(json.dumps(top))


def _manifest(layout: Path, index: int = 0) -> dict[str, object]:
    top = json.loads((layout / "index.json").read_text())
    digest = top["manifests"][index]["digest"].split(":", 1)[1]
    return json.loads((layout / "blobs" / "sha256" / digest).read_text())  # type: ignore[no-any-return]


def test_import_records_the_annotations_and_skopeo_copies_the_layer(
        lamina: Lamina, tree: Path, tmp_path: Path) -> None:
    skopeo = need("skopeo")
    lamina.run("import", "--compression", "zstd:chunked", "ck/app:v1", tree)
    layout = tmp_path / "layout"
    lamina.run("save", "--format", "oci", "-o", layout, "ck/app:v1")
    layer = _manifest(layout)["layers"][0]  # type: ignore[index]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert set(layer["annotations"]) == {zc.CHECKSUM_ANNOTATION, zc.POSITION_ANNOTATION,
                                         zc.TAR_SPLIT_ANNOTATION, zc.LEGACY_CHECKSUM_ANNOTATION,
                                         zc.LEGACY_POSITION_ANNOTATION}
    blob = (layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
    check_spans(blob, read_toc(blob, layer["annotations"]))
    # skopeo copies it as it is (same digest) and lamina loads the copy back
    copy = tmp_path / "copy"
    sh(skopeo, "copy", f"oci:{layout}:v1", f"oci:{copy}:v1")
    copied = _manifest(copy)["layers"][0]  # type: ignore[index]
    assert copied["digest"] == layer["digest"]
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", "--name", "ck/copy:v1", copy)
    other.run("unpack", "ck/copy:v1", tmp_path / "unpacked")
    assert snapshot(tmp_path / "unpacked") == snapshot(tree)


def skopeo_chunked(lamina: Lamina, src: Path, tmp_path: Path) -> tuple[bytes, dict[str, str]]:
    """A layer skopeo wrote as zstd:chunked (converting lamina's gzip layer of ``src``)."""
    skopeo = need("skopeo")
    lamina.run("import", "sk/src:v1", src)
    layout = tmp_path / "sk-src"
    lamina.run("save", "--format", "oci", "-o", layout, "sk/src:v1")
    dest = tmp_path / "sk-dest"
    sh(skopeo, "copy", "--dest-compress-format", "zstd:chunked", f"oci:{layout}:v1",
       f"oci:{dest}:v1")
    layer = _manifest(dest)["layers"][0]  # type: ignore[index]
    return ((dest / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes(),
            layer["annotations"])


def test_reader_reads_a_skopeo_written_layer(lamina: Lamina, tree: Path,
                                             tmp_path: Path) -> None:
    blob, annotations = skopeo_chunked(lamina, tree, tmp_path)
    assert mt.is_chunked(annotations)
    footer = zc.read_footer(blob[-zc.FOOTER_SIZE:])
    assert footer.location == zc.toc_location(annotations)
    toc = read_toc(blob, annotations)
    spans = check_spans(blob, toc)
    by_name = {e.name: e for e in toc.entries}
    assert by_name["bin/tool"].digest == sha((tree / "bin" / "tool").read_bytes())
    assert by_name["big"].digest == sha((tree / "big").read_bytes())
    assert len(by_name["big"].chunks) > 2  # skopeo's rolling sum cuts ~64 KiB chunks
    assert len(spans) >= sum(len(e.chunks) for e in toc.entries)
    # the whole blob is still the tree
    apply_bytes(blob, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tree)


def test_build_cache_hit_keeps_the_annotations(lamina: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY data /data\n")
    (ctx / "data").write_bytes(big_bytes(100_000, 3))
    first = lamina.run("build", "--compression", "zstd:chunked", "-t", "ck/b:1", "--json",
                       ctx).json()
    second = lamina.run("build", "--compression", "zstd:chunked", "-t", "ck/b:2", "--json",
                        ctx).json()
    assert first["digest"] == second["digest"]  # the cached layer's descriptor is the same
    layout = tmp_path / "layout"
    lamina.run("save", "--format", "oci", "-o", layout, "ck/b:2")
    layer = _manifest(layout)["layers"][0]  # type: ignore[index]
    assert mt.is_chunked(layer["annotations"])


@pytest.mark.parametrize("command", [["import", "x:1", "."], ["build", "."],
                                     ["run", "--commit", "x:2", "x:1", "true"]])
def test_unknown_compression_is_one_line(lamina: Lamina, command: list[str]) -> None:
    res = lamina.fail(*command[:1], "--compression", "zstd:fast", *command[1:])
    assert res.code == 3
    assert "unknown compression 'zstd:fast'" in res.err and "zstd:chunked" in res.err


def test_write_tree_streams_files_larger_than_a_chunk(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "huge").write_bytes(b"\0" * (CHUNK_MAX * 2 + 5))  # no anchor in zeros: max cuts
    buf = io.BytesIO()
    info = write_tree(root, buf, LayerOptions(compression="zstd:chunked"))
    toc = read_toc(buf.getvalue(), dict(info.annotations))
    sizes = [c.chunk_size for c in toc.entries[0].chunks]
    assert sizes == [CHUNK_MAX, CHUNK_MAX, 5]
    check_spans(buf.getvalue(), toc)
