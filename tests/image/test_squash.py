"""``lamina squash``: a range of layers merged into one, checked against the original by
unpacking both (lamina's apply) and by reading the merged layer's own members."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lamina_testing import Lamina, need, tree_listing
from stack_images import LOWER, RANGE, inodes, layer_members, write_layout


@pytest.fixture
def loaded(lamina: Lamina, tmp_path: Path) -> Lamina:
    lamina.run("load", write_layout(tmp_path / "layout", [LOWER, *RANGE]))
    return lamina


def _unpack(lamina: Lamina, ref: str, where: Path) -> dict[str, tuple[object, ...]]:
    lamina.run("unpack", ref, where)
    return tree_listing(where)


def _layer_blob(lamina: Lamina, ref: str, n: int) -> bytes:
    doc = lamina.run("inspect", ref).json()[0]
    digest = doc["Manifest"]["layers"][n]["digest"]
    return (lamina.root / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def test_squash_range_unpacks_the_same_and_keeps_lower_whiteouts(loaded: Lamina,
                                                                 tmp_path: Path) -> None:
    res = loaded.run("squash", "test/img", "--from", "2", "-t", "test/sq", "--json").json()
    assert res["squashed"] == [2, 4] and res["layers"] == 2
    before = _unpack(loaded, "test/img", tmp_path / "u-img")
    after = _unpack(loaded, "test/sq", tmp_path / "u-sq")
    assert after == before
    assert before["h/orig"][-1] != before["h/link"][-1]   # the link kept the old bytes
    assert inodes(tmp_path / "u-sq") == inodes(tmp_path / "u-img") == {
        "h/link": frozenset({"h/link", "h/l2"}), "h/l2": frozenset({"h/link", "h/l2"}),
        "lnk": frozenset({"lnk", "shared"}), "shared": frozenset({"lnk", "shared"})}
    img = json.loads(loaded.run("inspect", "test/img").out)[0]
    sq = json.loads(loaded.run("inspect", "test/sq").out)[0]
    # the layer below the range is the same blob
    assert sq["Manifest"]["layers"][0] == img["Manifest"]["layers"][0]
    members = dict(layer_members(_layer_blob(loaded, "test/sq", 1)))
    # whiteouts and opaque markers that hide lower files survive ...
    assert "lowdel" not in members and ".wh.lowdel" in members
    assert "a/.wh.y" in members
    assert "o/.wh..wh..opq" in members and "r/.wh..wh..opq" in members
    # ... those of files the range itself added and deleted vanish, with the files
    assert not {".wh.tmp", "tmp", "n/.wh.new1", "n/new1"} & set(members)
    assert {"o/3", "o/4", "r/g"} <= set(members)    # what the range added next to them
    assert members["h/l2"] == "0" and members["h/link"] == "1"   # l2 is first in tar order
    assert members["lnk"] == "1"                                 # a link to a lower file


def test_squash_history_tells_what_was_merged(loaded: Lamina) -> None:
    loaded.run("squash", "test/img", "--last", "2", "-t", "test/sq")
    rows = loaded.run("history", "test/sq", "--json").json()
    assert [(r["created_by"], r["empty_layer"], r["comment"]) for r in rows] == [
        ("layer 4", False, "squashed layers 3..4"),
        ("layer 3", True, "squashed into layer 3"),
        ("layer 2", False, ""), ("layer 1", False, "")]
    doc = loaded.run("inspect", "test/sq").json()[0]
    assert len(doc["RootFS"]["Layers"]) == 3
    assert sum(1 for h in doc["History"] if not h.get("empty_layer")) == 3


def test_flatten_has_no_whiteouts_and_the_same_root(loaded: Lamina, tmp_path: Path) -> None:
    loaded.run("squash", "test/img", "--all", "-t", "test/flat")
    names = [n for n, _ in layer_members(_layer_blob(loaded, "test/flat", 0))]
    assert not [n for n in names if ".wh." in n]
    assert _unpack(loaded, "test/flat", tmp_path / "f") == _unpack(
        loaded, "test/img", tmp_path / "i")
    assert inodes(tmp_path / "f") == inodes(tmp_path / "i")


def test_squash_is_deterministic_across_stores(make_lamina: object, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "layout", [LOWER, *RANGE])
    results = []
    for name in ("one", "two"):
        lam = make_lamina(name)  # type: ignore[operator]
        lam.run("load", layout)
        results.append(lam.run("squash", "test/img", "--from", "2", "--json").json())
    assert results[0]["layer"] == results[1]["layer"]
    assert results[0]["digest"] == results[1]["digest"]
    assert results[0]["tags"] == ["docker.io/test/img:latest"]


def test_squash_zstd_and_peers_read_it(loaded: Lamina, tmp_path: Path) -> None:
    res = loaded.run("squash", "test/img", "--all", "--compression", "zstd", "-t", "test/z",
                     "--json").json()
    doc = loaded.run("inspect", "test/z").json()[0]
    assert doc["Manifest"]["layers"][0]["mediaType"].endswith("+zstd")
    assert doc["Manifest"]["layers"][0]["digest"] == res["layer"]
    assert _unpack(loaded, "test/z", tmp_path / "z") == _unpack(
        loaded, "test/img", tmp_path / "i")
    loaded.assert_consistent()


def test_squash_refuses_bad_ranges(loaded: Lamina) -> None:
    before = loaded.blob_files()
    for args, msg in ((["--from", "9"], "--from 9: the image has layers 1 to 4"),
                      (["--last", "0"], "--last 0: the image has 4 layers"),
                      ([], "say which layers to squash"),
                      (["--all", "--last", "2"], "say which layers to squash")):
        res = loaded.fail("squash", "test/img", *args)
        assert res.code == 3 and msg in res.err and len(res.err.splitlines()) == 1, res.err
    assert loaded.blob_files() == before


def test_squash_refuses_a_link_to_a_lower_file_the_range_changes(lamina: Lamina,
                                                                 tmp_path: Path) -> None:
    layers = [[("f", "file", b"lower")],
              [("l", "link", "f")],
              [("f", "file", b"changed")]]
    lamina.run("load", write_layout(tmp_path / "layout", layers))
    before = lamina.blob_files()
    res = lamina.fail("squash", "test/img", "--from", "2")
    assert res.code == 7 and "hard link 'l' names 'f'" in res.err, res.err
    assert lamina.blob_files() == before
    lamina.assert_consistent()


def test_diff_and_history_tell_the_squash(loaded: Lamina) -> None:
    loaded.run("squash", "test/img", "--from", "2", "-t", "test/sq")
    diff = loaded.run("diff", "test/img", "test/sq", "--json").json()
    assert diff["relation"] == "B is A with layers 2..4 squashed into layer 2"
    # The same root, though which path of a hard-link group carries the bytes moved
    # (the merged layer writes them at the first path in tar order): a link compares as
    # the file it names.
    assert diff["files"] == []
    back = loaded.run("diff", "test/sq", "test/img", "--json").json()
    assert back["relation"] == "A is B with layers 2..4 squashed into layer 2"
    assert "Stack: squashed layers 2..4" in loaded.run("history", "test/sq").out


def test_umoci_unpacks_a_squashed_image_to_the_same_root(loaded: Lamina,
                                                          tmp_path: Path) -> None:
    """umoci applies whiteouts and opaque markers in tar order, as Docker does: the
    merged layer must be right for such readers too."""
    umoci = need("umoci")
    loaded.run("squash", "test/img", "--from", "2", "-t", "test/img:sq")
    layout = tmp_path / "layout-out"
    loaded.run("save", "test/img:sq", "-o", layout, "--format", "oci")
    subprocess.run([umoci, "unpack", "--image", f"{layout}:sq", tmp_path / "bundle"],
                   check=True, capture_output=True)
    assert tree_listing(tmp_path / "bundle" / "rootfs") == _unpack(
        loaded, "test/img", tmp_path / "mine")
    assert inodes(tmp_path / "bundle" / "rootfs") == inodes(tmp_path / "mine")


def test_diff_compares_a_hard_link_as_the_file_it_names(lamina: Lamina,
                                                         tmp_path: Path) -> None:
    lamina.run("load", write_layout(tmp_path / "a", [[("f", "file", b"one"),
                                                      ("l", "link", "f")]], "test/a:latest"))
    lamina.run("load", write_layout(tmp_path / "b", [[("f", "file", b"one"),
                                                      ("l", "file", b"two")]], "test/b:latest"))
    lamina.run("load", write_layout(tmp_path / "c", [[("f", "file", b"one"),
                                                      ("l", "file", b"one")]], "test/c:latest"))
    diff = lamina.run("diff", "test/a", "test/b", "--json").json()
    assert [(f["path"], f["changed"]) for f in diff["files"]] == [("/l", ["content"])]
    assert lamina.run("diff", "test/a", "test/c", "--json").json()["files"] == []


# -- between places ---------------------------------------------------------------------
def test_squash_between_layouts_equals_the_store_squash(make_lamina: Any,
                                                        tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "layout", [LOWER, *RANGE])
    store = make_lamina("store")
    store.run("load", layout)
    ref = store.run("squash", "test/img", "--from", "2", "-t", "test/sq", "--json").json()
    runner = make_lamina("runner")
    out = tmp_path / "out"
    res = runner.run("squash", f"oci:{layout}", "--from", "2", "-t", f"oci:{out}:sq",
                     "--json").json()
    # The same merged layer, config and manifest as the store's squash (determinism).
    assert (res["layer"], res["diff_id"], res["id"], res["digest"]) == (
        ref["layer"], ref["diff_id"], ref["id"], ref["digest"])
    assert res["tags"] == ["docker.io/test/img:sq"] and res["destination"] == f"oci:{out}:sq"
    # The layer below the range, the merged layer, the config: 3 blobs, plus the manifest.
    assert (res["blobs_moved"], res["blobs_present"]) == (3, 0)
    assert len(list((out / "blobs" / "sha256").iterdir())) == 4
    assert not runner.blob_files()      # nothing of it stayed in the store that ran it
    check = make_lamina("check")
    check.run("load", out)
    assert _unpack(check, "test/img:sq", tmp_path / "u-out") == _unpack(
        store, "test/sq", tmp_path / "u-store") == _unpack(store, "test/img", tmp_path / "u")
    assert inodes(tmp_path / "u-out") == inodes(tmp_path / "u")


def test_squash_of_a_layout_without_dest_rewrites_its_entry(lamina: Lamina,
                                                            tmp_path: Path) -> None:
    """As rebase (and crane): without -t the result takes IMAGE's own place and name."""
    layout = write_layout(tmp_path / "layout", [LOWER, *RANGE])
    res = lamina.run("squash", f"oci:{layout}", "--last", "2", "--json").json()
    index = json.loads((layout / "index.json").read_text())
    assert [(m["digest"], m["annotations"]["io.containerd.image.name"])
            for m in index["manifests"]] == [(res["digest"], "docker.io/test/img:latest")]
    lamina.run("load", layout)
    assert lamina.run("inspect", "test/img").json()[0]["Id"] == res["id"]


def test_squash_docker_archive_into_an_oci_archive(lamina: Lamina, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "layout", [LOWER, *RANGE])
    lamina.run("load", layout)
    lamina.run("save", "test/img", "-o", tmp_path / "img.tar")
    ref = lamina.run("squash", "test/img", "--all", "-t", "test/flat", "--json").json()
    res = lamina.run("squash", f"docker-archive:{tmp_path / 'img.tar'}", "--all", "-t",
                     f"oci-archive:{tmp_path / 'flat.tar'}:flat", "--json").json()
    assert res["layer"] == ref["layer"] and res["layers"] == 1
    check = Lamina(tmp_path / "check", tmp_path)
    check.run("load", tmp_path / "flat.tar")
    assert _unpack(check, "test/img:flat", tmp_path / "a") == _unpack(
        lamina, "test/img", tmp_path / "b")


def test_squash_between_places_refuses_a_corrupt_blob(lamina: Lamina, tmp_path: Path) -> None:
    """A layer whose tar is right but whose blob is not the one the manifest names
    (bytes after the gzip stream): refused by the blob's size and digest, one line,
    nothing written."""
    layout = write_layout(tmp_path / "layout", [LOWER, *RANGE])
    index = json.loads((layout / "index.json").read_text())
    top = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / top).read_text())
    blob = layout / "blobs" / "sha256" / manifest["layers"][2]["digest"].split(":")[1]
    with open(blob, "ab") as f:
        f.write(b"\0" * 16)
    res = lamina.fail("squash", f"oci:{layout}", "--from", "2", "-t", f"oci:{tmp_path / 'o'}")
    assert res.code == 4 and len(res.err.splitlines()) == 1, res.err
    assert manifest["layers"][2]["digest"] in res.err
    assert not (tmp_path / "o").exists() and not lamina.blob_files()
