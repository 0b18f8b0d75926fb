"""#14.3: incremental save/load across an air gap, with the real CLI and two stores.

Store A builds release 1 (the seed's os → webserver → config → site-a) and release 2
(the same four layers and one more: site-b over site-a).  Store B holds release 1; it
writes its inventory, A saves release 2 without what B has, B loads it."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina.transport.inventory import INCREMENTAL_ANNOTATION, OMITTED_ANNOTATION
from lamina_testing import Lamina, need, seed_sources, tree_listing


@pytest.fixture
def gap(make_lamina, seed: Path, tmp_path: Path) -> tuple[Lamina, Lamina, Path]:  # type: ignore[no-untyped-def]
    """A with app:1 and app:2; B with app:1 (loaded from a full save of A's); the
    full save of release 1 at tmp/r1.tar."""
    a, b = make_lamina("a"), make_lamina("b")
    a.run("import", "app:1", *seed_sources(seed, "a"))
    a.run("import", "app:2", *seed_sources(seed, "a"), seed / "site-b")
    a.run("save", "app:1", "--format", "oci-archive", "-o", tmp_path / "r1.tar")
    b.run("load", tmp_path / "r1.tar")
    return a, b, tmp_path / "r1.tar"


def _blobs_in(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name.removeprefix("blobs/sha256/"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar if m.isfile() and m.name.startswith("blobs/")}


def _index(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr, no-any-return]


def _manifest(lam: Lamina, ref: str) -> dict[str, object]:
    return lam.run("inspect", ref).json()[0]["Manifest"]  # type: ignore[no-any-return]


def _digest(lam: Lamina, ref: str) -> str:
    return str(lam.run("inspect", ref).json()[0]["Digest"])


def _state(lam: Lamina) -> tuple[str, set[str]]:
    return lam.run("images", "--json").out, lam.blob_files()


def test_second_release_crosses_as_its_new_layer(gap: tuple[Lamina, Lamina, Path],
                                                  tmp_path: Path) -> None:
    a, b, _ = gap
    inv = b.run("inventory").json()
    b.run("inventory", "-o", tmp_path / "inv.json")
    assert json.loads((tmp_path / "inv.json").read_text()) == inv
    assert inv["mediaType"] == "application/vnd.lamina.inventory.v1+json"
    m1 = _manifest(b, "app:1")
    assert {L["digest"] for L in m1["layers"]} <= set(inv["blobs"])  # type: ignore[attr-defined]
    assert len(inv["diffIds"]) == 4

    a.run("save", "app:2", "--exclude", tmp_path / "inv.json", "-o", tmp_path / "x.tar")
    m2 = _manifest(a, "app:2")
    new_layer = m2["layers"][-1]["digest"]  # type: ignore[index]
    blobs = _blobs_in(tmp_path / "x.tar")
    # only the new layer, the config and the manifest
    assert set(blobs) == {d.removeprefix("sha256:") for d in (  # type: ignore[attr-defined]
        new_layer, m2["config"]["digest"], _digest(a, "app:2"))}  # type: ignore[index]
    index = _index(tmp_path / "x.tar")
    annotations = index["annotations"]
    assert annotations[INCREMENTAL_ANNOTATION] == "true"  # type: ignore[index]
    assert annotations[OMITTED_ANNOTATION].split(",") == sorted(  # type: ignore[index]
        L["digest"] for L in m2["layers"][:4])  # type: ignore[index]
    # the full archive is much bigger: it holds the busybox layer
    full = (tmp_path / "r1.tar").stat().st_size
    assert (tmp_path / "x.tar").stat().st_size * 20 < full

    res = b.run("load", tmp_path / "x.tar")
    assert res.out == "Loaded image: app:2\n"
    assert _digest(b, "app:2") == _digest(a, "app:2")
    a.run("unpack", "app:2", tmp_path / "ua")
    b.run("unpack", "app:2", tmp_path / "ub")
    assert tree_listing(tmp_path / "ub") == tree_listing(tmp_path / "ua")
    b.assert_consistent()


def test_missing_blob_is_refused_and_nothing_loaded(gap: tuple[Lamina, Lamina, Path],
                                                     make_lamina, seed: Path,  # type: ignore[no-untyped-def]
                                                     tmp_path: Path) -> None:
    a, b, _ = gap
    b.run("inventory", "-o", tmp_path / "inv.json")
    a.run("save", "app:2", "--exclude", tmp_path / "inv.json", "-o", tmp_path / "x.tar")
    # C has the first two layers of release 1 (os, webserver), not the third
    c = make_lamina("c")
    c.run("import", "base:1", *seed_sources(seed, "a")[:2])
    before = _state(c)
    third = _manifest(a, "app:2")["layers"][2]["digest"]  # type: ignore[index]
    res = c.fail("load", tmp_path / "x.tar")
    assert res.code == 2
    assert res.err.count("\n") == 1
    assert f"blob {third}, layer 3 of 5 of manifest " in res.err
    assert "of app:2, is neither in the archive nor in the store (and 1 more); it was " \
        "saved for a store that has it (save --exclude): nothing loaded" in res.err
    assert _state(c) == before
    c.assert_consistent()


def test_corrupt_blob_in_archive_is_refused(gap: tuple[Lamina, Lamina, Path],
                                            tmp_path: Path) -> None:
    a, b, _ = gap
    b.run("inventory", "-o", tmp_path / "inv.json")
    a.run("save", "app:2", "--exclude", tmp_path / "inv.json", "-o", tmp_path / "x.tar")
    new_layer = _manifest(a, "app:2")["layers"][-1]["digest"]  # type: ignore[index]
    bad = tmp_path / "bad.tar"
    with tarfile.open(tmp_path / "x.tar") as src, tarfile.open(bad, "w") as dst:
        for m in src:
            data = src.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if data is not None and m.name == f"blobs/{new_layer.replace(':', '/')}":
                data = data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:]
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    before = _state(b)
    res = b.fail("load", bad)
    assert res.code == 4, res.err
    assert res.err.count("\n") == 1 and new_layer in res.err
    assert _state(b) == before
    assert "app:2" not in b.run("images").out
    b.assert_consistent()


def test_exclude_an_image_of_the_store(gap: tuple[Lamina, Lamina, Path],
                                       tmp_path: Path) -> None:
    a, b, _ = gap
    res = a.run("save", "app:2", "--exclude", "app:1", "-o", tmp_path / "y.tar")
    assert res.err.startswith("Left out 4 layers the reader has (")
    assert len(_blobs_in(tmp_path / "y.tar")) == 3
    assert b.run("load", tmp_path / "y.tar").out == "Loaded image: app:2\n"
    b.assert_consistent()
    # an exclude that names nothing known is refused before anything is written
    res = a.fail("save", "app:2", "--exclude", "nosuch:1", "-o", tmp_path / "z.tar")
    assert res.code == 2 and "--exclude nosuch:1: neither an inventory file nor an image" \
        in res.err
    assert not (tmp_path / "z.tar").exists()


def test_docker_archive_cannot_be_incremental(gap: tuple[Lamina, Lamina, Path],
                                              tmp_path: Path) -> None:
    a, _, _ = gap
    for fmt in ("docker-archive", "docker-oci-archive"):
        res = a.fail("save", "app:2", "--exclude", "app:1", "--format", fmt,
                     "-o", tmp_path / "d.tar")
        assert res.code == 3
        assert res.err == (f"lamina: a {fmt} cannot leave layers out (docker load refuses "
                           "one whose layers are missing): --exclude needs --format "
                           "oci-archive or oci\n")
        assert not (tmp_path / "d.tar").exists()


def test_full_save_is_not_marked_and_skopeo_reads_it(gap: tuple[Lamina, Lamina, Path],
                                                     tmp_path: Path) -> None:
    a, _, r1 = gap
    assert "annotations" not in _index(r1)
    skopeo = need("skopeo")
    subprocess.run([skopeo, "copy", "-q", f"oci-archive:{r1}", f"oci:{tmp_path / 'copy'}:1"],
                   check=True, capture_output=True)
    # an incremental one lacks blobs: skopeo stops on the first, as expected
    a.run("save", "app:2", "--exclude", "app:1", "-o", tmp_path / "y.tar")
    res = subprocess.run([skopeo, "copy", "-q", f"oci-archive:{tmp_path / 'y.tar'}",
                          f"oci:{tmp_path / 'copy2'}:2"], capture_output=True, text=True)
    assert res.returncode != 0
