"""#11.1: ``--dest-compress-format`` converts existing layers on ``save`` and ``copy``
(skopeo's option): the same tar (diff_id, config, image id kept) through another
compressor; a zstd:chunked layer carries its TOC; the same layer converted twice is the
same blob; bad names are one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lamina.layer import zstdchunked as zc
from lamina_testing import Lamina, need, tree_listing


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("a = 1\n")
    (root / "big").write_bytes(hashlib.sha256(b"x").digest() * 100_000)   # 3.2 MB, 2+ chunks
    (root / "link").symlink_to("etc/conf")
    os.link(root / "etc" / "conf", root / "hard")
    (root / "d" / ("n" * 120)).mkdir(parents=True)       # a name that needs PAX
    (root / "d" / ("n" * 120) / "f").write_bytes(b"deep")
    (root / "exe").write_bytes(b"#!/bin/sh\n")
    (root / "exe").chmod(0o755)
    return root


def _layout(path: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    blobs = path / "blobs" / "sha256"
    top = json.loads((path / "index.json").read_text())
    digest = top["manifests"][0]["digest"]
    manifest = json.loads((blobs / digest.split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    return manifest, config, blobs


def _blob(blobs: Path, desc: dict[str, Any]) -> bytes:
    return (blobs / desc["digest"].split(":")[1]).read_bytes()


@pytest.fixture
def image(lamina: Lamina, tmp_path: Path) -> Lamina:
    """cv/app:v1, two gzip layers."""
    base = _tree(tmp_path / "v1")
    lamina.run("import", "cv/app:v1", base, _add(base, tmp_path / "v2"))
    return lamina


def _add(base: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", base, to], check=True)
    (to / "etc" / "conf").write_text("a = 2\n")
    (to / "new").write_bytes(b"n" * 5000)
    return to


def test_save_oci_as_zstd_chunked(image: Lamina, tmp_path: Path) -> None:
    zstd = need("zstd")
    image.run("save", "--format", "oci", "--dest-compress-format", "zstd:chunked",
              "-o", tmp_path / "out", "cv/app:v1")
    manifest, config, blobs = _layout(tmp_path / "out")
    # the config, so the image id, is the stored one
    assert "sha256:" + hashlib.sha256(_blob(blobs, manifest["config"])).hexdigest() == \
        image.run("inspect", "cv/app:v1").json()[0]["Id"]
    assert len(manifest["layers"]) == 2
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        blob = _blob(blobs, layer)
        assert layer["size"] == len(blob)
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        ann = layer["annotations"]
        assert zc.read_footer(blob[-zc.FOOTER_SIZE:]).location == zc.toc_location(ann)
        loc = zc.toc_location(ann)
        assert loc is not None
        toc = zc.parse_toc(blob[loc.offset:loc.offset + loc.length], zc.toc_checksum(ann) or "",
                           len(blob), loc)     # the TOC's checksum is verified here
        assert sum(n for _, n in zc.frame_spans(toc, len(blob))) == len(blob)
        # any zstd reader sees the very tar the config names
        tar = subprocess.run([zstd, "-dc"], input=blob, capture_output=True, check=True).stdout
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
    names = {e.name for e in toc.entries}
    assert "new" in names and "etc/conf" in names
    # it loads back into a fresh store and unpacks to the imported tree
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", tmp_path / "out")
    other.run("unpack", "cv/app:v1", tmp_path / "unpacked")
    image.run("unpack", "cv/app:v1", tmp_path / "orig")
    assert tree_listing(tmp_path / "unpacked") == tree_listing(tmp_path / "orig")


def test_converting_twice_gives_the_same_blobs(image: Lamina, tmp_path: Path) -> None:
    for fmt in ("zstd:chunked", "zstd", "gzip"):
        digests = []
        for k, lam in enumerate((image, Lamina(tmp_path / f"s{fmt}", tmp_path))):
            if lam is not image:    # another store, so no recorded conversion helps
                image.run("save", "--format", "oci", "-o", tmp_path / f"plain{fmt}", "cv/app:v1")
                lam.run("load", tmp_path / f"plain{fmt}")
            out = tmp_path / f"{fmt}-{k}"
            lam.run("save", "--format", "oci", "--dest-compress-format", fmt, "-o", out,
                    "cv/app:v1")
            manifest, _, _ = _layout(out)
            digests.append([layer["digest"] for layer in manifest["layers"]])
        assert digests[0] == digests[1], fmt


def test_gzip_layers_are_kept_for_gzip_and_chunked_to_gzip_drops_the_toc(
        image: Lamina, tmp_path: Path) -> None:
    stored = image.run("inspect", "cv/app:v1").json()[0]["Manifest"]["layers"]
    image.run("save", "--format", "oci", "--dest-compress-format", "gzip", "-o",
              tmp_path / "gz", "cv/app:v1")
    assert [x["digest"] for x in _layout(tmp_path / "gz")[0]["layers"]] == \
        [x["digest"] for x in stored]
    image.run("copy", "cv/app:v1", "oci:" + str(tmp_path / "ck"), "--dest-compress-format",
              "zstd:chunked", "--dest-compress-level", "5")
    image.run("copy", "oci:" + str(tmp_path / "ck"), "oci:" + str(tmp_path / "back"),
              "--dest-compress-format", "gzip")
    back, config, blobs = _layout(tmp_path / "back")
    for layer, diff_id in zip(back["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert "annotations" not in layer
        import gzip

        assert "sha256:" + hashlib.sha256(gzip.decompress(_blob(blobs, layer))).hexdigest() \
            == diff_id
    # lamina's own gzip of the same tar: the stored blobs again
    assert [x["digest"] for x in back["layers"]] == [x["digest"] for x in stored]


@pytest.mark.parametrize(("args", "message"), [
    (["--dest-compress-format", "brotli"],
     "unknown destination compression 'brotli': choose gzip, zstd, zstd:chunked"),
    (["--dest-compress-format", "zstd", "--dest-compress-level", "99"],
     "zstd level 99 is out of range -7..22"),
    (["--dest-compress-level", "3"], "--dest-compress-level needs --dest-compress-format"),
])
def test_bad_destination_compression_is_one_line(image: Lamina, tmp_path: Path,
                                                 args: list[str], message: str) -> None:
    for cmd in (["save", "--format", "oci", "-o", tmp_path / "x", "cv/app:v1"],
                ["copy", "cv/app:v1", f"oci:{tmp_path / 'y'}"],
                ["push", "cv/app:v1", "127.0.0.1:9/cv/app:v1"]):
        res = image.fail(*cmd, *args)
        assert res.code == 3, res.err
        assert res.err.strip() == f"lamina: {message}"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_docker_archive_and_docker_manifests_are_refused(image: Lamina, tmp_path: Path) -> None:
    res = image.fail("save", "--dest-compress-format", "zstd", "-o", tmp_path / "a.tar",
                     "cv/app:v1")
    assert res.code == 3 and "docker-archive layers are written uncompressed" in res.err
    assert not (tmp_path / "a.tar").exists()



def _as_docker(layout: Path) -> str:
    """Relabel the layout's manifest as a Docker v2.2 one (config and layers keep their
    bytes); returns the new manifest's digest."""
    manifest, _, blobs = _layout(layout)
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    manifest["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in manifest["layers"]:
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (blobs / digest).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(mediaType=manifest["mediaType"], digest="sha256:" + digest,
                                 size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    return "sha256:" + digest


def test_docker_image_to_zstd_gets_an_oci_manifest(image: Lamina, tmp_path: Path) -> None:
    """A Docker manifest cannot name zstd layers: as skopeo, the manifest becomes OCI;
    to gzip it stays Docker (and its gzip layers are kept)."""
    image.run("save", "--format", "oci", "-o", tmp_path / "src", "cv/app:v1")
    config = _layout(tmp_path / "src")[0]["config"]["digest"]
    _as_docker(tmp_path / "src")
    image.run("copy", f"oci:{tmp_path / 'src'}", f"oci:{tmp_path / 'ck'}",
              "--dest-compress-format", "zstd:chunked")
    manifest, _, _ = _layout(tmp_path / "ck")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"] == {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": config, "size": manifest["config"]["size"]}
    assert {x["mediaType"] for x in manifest["layers"]} == \
        {"application/vnd.oci.image.layer.v1.tar+zstd"}
    top = json.loads((tmp_path / "ck" / "index.json").read_text())["manifests"][0]
    assert top["mediaType"] == manifest["mediaType"]
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", tmp_path / "ck")
    other.run("unpack", "cv/app:v1", tmp_path / "unpacked")
    image.run("unpack", "cv/app:v1", tmp_path / "orig")
    assert tree_listing(tmp_path / "unpacked") == tree_listing(tmp_path / "orig")

    image.run("copy", f"oci:{tmp_path / 'src'}", f"oci:{tmp_path / 'gz'}",
              "--dest-compress-format", "gzip")
    gz, _, _ = _layout(tmp_path / "gz")
    assert gz == _layout(tmp_path / "src")[0]     # already gzip: the same manifest


def test_converted_layer_is_the_layer_import_writes(lamina: Lamina, tmp_path: Path) -> None:
    """The same tar through the same sink: converting lamina's gzip layer to zstd:chunked
    gives the very blob (and annotations) ``import --compression zstd:chunked`` writes."""
    tree = _tree(tmp_path / "t")
    lamina.run("import", "cv/gz:v1", tree)
    lamina.run("import", "--compression", "zstd:chunked", "cv/ck:v1", tree)
    made = lamina.run("inspect", "cv/ck:v1").json()[0]["Manifest"]["layers"]
    lamina.run("copy", "cv/gz:v1", f"oci:{tmp_path / 'conv'}", "--dest-compress-format",
               "zstd:chunked")
    converted = _layout(tmp_path / "conv")[0]["layers"]
    assert [(x["digest"], x["annotations"]) for x in converted] == \
        [(x["digest"], x["annotations"]) for x in made]


def test_conversion_is_bounded_by_the_expansion_limit(image: Lamina, tmp_path: Path) -> None:
    res = image.run("save", "--format", "oci", "--dest-compress-format", "zstd", "-o",
                    tmp_path / "x", "cv/app:v1", check=False,
                    env={"LAMINA_MAX_EXPANSION": "1:1KiB"})
    assert res.code == 3, res.err
    assert "expand" in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "x").exists()
    image.assert_consistent()
