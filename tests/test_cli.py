"""The CLI end to end on the seed story: import, list, history, inspect, names, gc, fsck."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lamina_testing import Lamina, seed_sources, tree_listing


def import_seed(lamina: Lamina, seed: Path, site: str, name: str | None = None) -> dict:
    res = lamina.run("import", "--json", name or f"demo/{site}", *seed_sources(seed, site))
    return res.json()


def test_seed_images_share_three_layers(lamina: Lamina, seed: Path) -> None:
    a = import_seed(lamina, seed, "a")
    blobs_after_a = lamina.blob_files()
    assert len(blobs_after_a) == 6  # 4 layers, config, manifest
    b = import_seed(lamina, seed, "b")
    assert [x["digest"] for x in a["layers"][:3]] == [x["digest"] for x in b["layers"][:3]]
    assert a["layers"][3]["digest"] != b["layers"][3]["digest"]
    # B cost exactly one layer, its config and its manifest.
    new = lamina.blob_files() - blobs_after_a
    assert len(new) == 3
    assert b["layers"][3]["digest"].split(":")[1] in new
    listed = {(x["repository"], x["tag"]): x for x in lamina.run("images", "--json").json()}
    assert set(listed) == {("demo/a", "latest"), ("demo/b", "latest")}
    assert listed[("demo/a", "latest")]["layers"] == 4
    assert listed[("demo/b", "latest")]["digest"] == b["digest"]
    lamina.assert_consistent()


def test_images_table_and_history(lamina: Lamina, seed: Path) -> None:
    import_seed(lamina, seed, "a")
    table = lamina.run("images").out.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE",
                                "COMPRESSED", "LAYERS"]
    assert table[1].split()[:2] == ["demo/a", "latest"]
    rows = lamina.run("history", "--json", "demo/a").json()
    assert [r["created_by"] for r in rows] == [
        "lamina import site-a", "lamina import config",
        "lamina import webserver", "lamina import os"]
    assert all(r["created"] == "2023-11-14T22:13:20Z" for r in rows)
    text = lamina.run("history", "demo/a").out.splitlines()
    assert text[0].split()[:3] == ["LAYER", "CREATED", "CREATED"]
    assert len(text) == 5


def test_inspect_reports_config_and_layers(lamina: Lamina, seed: Path) -> None:
    a = import_seed(lamina, seed, "a")
    doc = lamina.run("inspect", "demo/a").json()[0]
    assert doc["Id"] == a["id"]
    assert doc["Digest"] == a["digest"]
    assert doc["RepoTags"] == ["demo/a:latest"]
    assert doc["RootFS"]["Layers"] == [x["diff_id"] for x in a["layers"]]
    assert doc["Architecture"] and doc["Os"] == "linux"
    # short image id and full digest resolve to the same image
    assert lamina.run("inspect", a["id"].split(":")[1][:12]).json()[0]["Id"] == a["id"]
    assert lamina.run("inspect", a["digest"]).json()[0]["Id"] == a["id"]


def test_unpack_gives_the_last_snapshot(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    import_seed(lamina, seed, "b")
    lamina.run("unpack", "demo/b", tmp_path / "root")
    got = tree_listing(tmp_path / "root")
    want = tree_listing(seed / "site-b")
    # directory mtimes aside, the unpacked root is the snapshot entry by entry
    assert got == want
    res = lamina.fail("unpack", "demo/b", tmp_path / "root")
    assert "not empty" in res.err


def test_export_is_the_flattened_root(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    import_seed(lamina, seed, "a")
    lamina.run("export", "demo/a", "-o", tmp_path / "a.tar")
    names = subprocess.run(["tar", "-tf", tmp_path / "a.tar"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "var/www/html/index.html" in names
    assert "bin/busybox" in names
    assert not any(".wh." in n for n in names)


def test_tag_rmi_and_gc(lamina: Lamina, seed: Path) -> None:
    a = import_seed(lamina, seed, "a")
    import_seed(lamina, seed, "b")
    lamina.run("tag", "demo/a", "demo/a:v2")
    res = lamina.run("rmi", "demo/a")
    assert res.out.strip() == "Untagged: demo/a:latest"  # still named demo/a:v2
    res = lamina.run("rmi", "demo/a:v2")
    lines = res.out.splitlines()
    assert lines[0] == "Untagged: demo/a:v2"
    deleted = {line.split()[1] for line in lines[1:]}
    # the manifest, config and A's own layer go; the three shared layers stay for B
    assert a["digest"] in deleted and a["id"] in deleted and a["layers"][3]["digest"] in deleted
    assert not deleted & {x["digest"] for x in a["layers"][:3]}
    assert len(lamina.blob_files()) == 6
    lamina.assert_consistent()
    lamina.run("rmi", "demo/b")
    assert lamina.blob_files() == set()
    assert lamina.run("images", "--json").json() == []


def test_reproducible_across_stores(make_lamina, seed: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(seed, copy, symlinks=True)
    first = make_lamina("one")
    a1 = first.run("import", "--json", "demo/a", *seed_sources(copy, "a")).json()
    time.sleep(1.1)
    for dirpath, _dirs, files in os.walk(copy):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.utime(p)  # touched: new mtimes
    second = make_lamina("two")
    a2 = second.run("import", "--json", "demo/a", *seed_sources(copy, "a")).json()
    assert a1["digest"] == a2["digest"]
    assert a1["layers"] == a2["layers"]


def test_zstd_layers(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    res = lamina.run("import", "--json", "--compression", "zstd", "demo/z",
                     *seed_sources(seed, "a")).json()
    doc = lamina.run("inspect", "demo/z").json()[0]
    assert {x["mediaType"] for x in doc["Manifest"]["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"}
    with open(lamina.root / "blobs/sha256" / res["layers"][0]["digest"].split(":")[1], "rb") as f:
        assert f.read(4) == b"\x28\xb5\x2f\xfd"
    lamina.run("unpack", "demo/z", tmp_path / "z")
    assert tree_listing(tmp_path / "z") == tree_listing(seed / "site-a")


def test_import_from_tars(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    tars = []
    for step in ("os", "webserver"):
        t = tmp_path / f"{step}.tar"
        subprocess.run(["tar", "-cf", t, "-C", seed / step, "."], check=True)
        tars.append(t)
    res = lamina.run("import", "--json", "fromtar", *tars).json()
    from_dirs = lamina.run("import", "--json", "fromdir", seed / "os", seed / "webserver").json()
    assert res["layers"][1]["diff_id"] == from_dirs["layers"][1]["diff_id"]
    lamina.run("unpack", "fromtar", tmp_path / "r")
    assert tree_listing(tmp_path / "r") == tree_listing(seed / "webserver")


def test_errors_are_one_line(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    cases = [
        (("inspect", "nosuch"), "image nosuch:latest not in the store", 2),
        (("import", "Bad Name", seed / "os"), "invalid reference", 3),
        (("import", "x", tmp_path / "missing"), "does not exist", 2),
        (("import", "--compression", "lz4", "x", seed / "os"), "unknown compression", 3),
        (("load", tmp_path), "neither a docker save archive", 3),
        (("tag", "nosuch", "other"), "not in the store", 2),
        (("save", "nosuch", "-o", tmp_path / "o.tar"), "not in the store", 2),
    ]
    for args, message, code in cases:
        res = lamina.fail(*args)
        assert res.code == code, (args, res.code, res.err)
        assert res.err.startswith("lamina: ") and message in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "o.tar").exists()
    lamina.assert_consistent()


def test_rmi_by_id_shared_across_repositories_needs_force(lamina: Lamina, seed: Path) -> None:
    a = import_seed(lamina, seed, "a")
    lamina.run("tag", "demo/a", "other/name:v1")
    short = a["id"].split(":")[1][:12]
    res = lamina.fail("rmi", short)
    assert res.code == 3 and "referenced in multiple repositories" in res.err
    assert len(lamina.run("images", "--json").json()) == 2
    res = lamina.run("rmi", "-f", short)
    assert sorted(res.out.splitlines()[:2]) == ["Untagged: demo/a:latest",
                                                "Untagged: other/name:v1"]
    assert f"Deleted: {a['digest']}" in res.out
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def test_full_image_id_and_digest_resolve(lamina: Lamina, seed: Path) -> None:
    a = import_seed(lamina, seed, "a")
    listed = lamina.run("images", "--json").json()[0]
    assert listed["id"] == a["id"]
    for ref in (a["id"], a["id"].split(":")[1], a["digest"], "demo/a@" + a["digest"]):
        assert lamina.run("inspect", ref).json()[0]["Digest"] == a["digest"], ref


def test_import_digest_does_not_depend_on_path_spelling(make_lamina, seed: Path) -> None:
    one, two = make_lamina("p1"), make_lamina("p2")
    d1 = one.run("import", "--json", "x", seed / "os").json()["digest"]
    two.cwd = seed  # the same snapshot named relatively
    assert two.run("import", "--json", "x", "os").json()["digest"] == d1


def test_load_names(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    import_seed(lamina, seed, "a")
    import_seed(lamina, seed, "b")
    layout = tmp_path / "two"
    lamina.run("save", "demo/a", "demo/b", "-o", layout, "--format", "oci")
    # strip the full names: only the (clashing → disambiguated) ref.name is left
    other = Lamina(tmp_path / "o", tmp_path)
    import json

    index = json.loads((layout / "index.json").read_text())
    for m, tag in zip(index["manifests"], ("latest", "v2"), strict=True):
        del m["annotations"]["io.containerd.image.name"]
        m["annotations"]["org.opencontainers.image.ref.name"] = tag
    (layout / "index.json").write_text(json.dumps(index))
    res = other.fail("load", "--name", "foo/bar:pinned", layout)
    assert "two images would both be named foo/bar:pinned" in res.err
    assert other.blob_files() == set()
    out = other.run("load", "--name", "foo/bar", layout).out.splitlines()
    assert sorted(out) == ["Loaded image: foo/bar:latest", "Loaded image: foo/bar:v2"]


def test_load_untagged_prints_image_id(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    a = import_seed(lamina, seed, "a")
    layout = tmp_path / "l"
    lamina.run("save", a["digest"], "-o", layout, "--format", "oci")
    other = Lamina(tmp_path / "o", tmp_path)
    assert other.run("load", layout).out.strip() == f"Loaded image ID: {a['id']}"


def test_same_image_in_another_encoding_leaves_no_twin(lamina: Lamina, seed: Path,
                                                       tmp_path: Path) -> None:
    import_seed(lamina, seed, "a")
    lamina.run("save", "demo/a", "-o", tmp_path / "l", "--format", "oci")
    lamina.run("save", "demo/a", "-o", tmp_path / "d.tar")
    other = Lamina(tmp_path / "o", tmp_path)
    other.run("load", tmp_path / "l")
    other.run("load", tmp_path / "d.tar")  # uncompressed layers: another manifest
    listed = other.run("images", "--json").json()
    assert [(x["repository"], x["tag"]) for x in listed] == [("demo/a", "latest")]
    other.run("gc")
    other.assert_consistent()
