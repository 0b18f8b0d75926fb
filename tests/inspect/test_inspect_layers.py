"""lamina history, layers and which: exact figures, from every kind of source."""

from __future__ import annotations

import os
import shutil

import pytest
from inspect_helpers import KnownImages

from lamina_testing import Lamina

# (path, kind, size) of each layer's changes; sizes of deletions are the bytes removed.
A_CHANGES = [
    [("/bin", "added", 0), ("/bin/t", "added", 0), ("/bin/tool", "added", 1000),
     ("/data", "added", 0), ("/data/big", "added", 5000), ("/data/old", "added", 3000),
     ("/etc", "added", 0), ("/etc/conf", "added", 100), ("/opt", "added", 0),
     ("/opt/keep", "added", 200)],
    [("/app", "added", 0), ("/app/main", "added", 400), ("/etc/conf", "modified", 150)],
    [("/data/big", "modified", 6000), ("/data/old", "deleted", 3000),
     ("/etc/motd", "added", 10), ("/etc/same", "added", 20)],
    [("/bin/tool", "modified", 1000)],
]
B_TOP = [("/app/b", "added", 50), ("/etc/motd", "added", 10), ("/etc/same", "added", 20),
         ("/opt", "deleted", 200)]


def _changes(layer: dict) -> list[tuple[str, str, int]]:
    return [(c["path"], c["kind"], c["size"]) for c in layer["changes"]]


@pytest.mark.parametrize("where", [0, 1, 2], ids=["store", "oci", "docker-archive"])
def test_layers_of_a(known: KnownImages, where: int) -> None:
    src = known.sources("a")[where]
    layers = known.lamina.run("layers", "--json", src).json()
    assert [x["layer"] for x in layers] == [1, 2, 3, 4]
    assert [x["files_size"] for x in layers] == [9300, 550, 6030, 1000]
    assert [x["created_by"] for x in layers] == [
        "lamina import base", "lamina import shared", "lamina import a3", "lamina import a4"]
    assert [_changes(x) for x in layers] == A_CHANGES
    assert [x["counts"] for x in layers] == [
        {"added": 10, "modified": 0, "deleted": 0, "opaque": 0},
        {"added": 2, "modified": 1, "deleted": 0, "opaque": 0},
        {"added": 2, "modified": 1, "deleted": 1, "opaque": 0},
        {"added": 0, "modified": 1, "deleted": 0, "opaque": 0}]
    chmod = layers[3]["changes"][0]
    assert (chmod["mode"], chmod["lower"]["mode"], chmod["lower"]["layer"]) == (
        "0700", "0755", 1)
    assert layers[0]["changes"][1]["link"] == "tool"


@pytest.mark.parametrize("where", [0, 1, 2], ids=["store", "oci", "docker-archive"])
def test_layer_option_and_whiteout_of_a_directory(known: KnownImages, where: int) -> None:
    src = known.sources("b")[where]
    (top,) = known.lamina.run("layers", "--json", "--layer", "3", src).json()
    assert top["layer"] == 3 and top["files_size"] == 80
    assert _changes(top) == B_TOP
    deleted = top["changes"][3]
    assert deleted["hidden_entries"] == 2 and deleted["lower"]["type"] == "dir"


def test_layers_tree_text(known: KnownImages) -> None:
    out = known.lamina.run("layers", "--layer", "3", "test/a").out.splitlines()
    assert out[0].startswith("Layer 3/4  ") and out[0].endswith("lamina import a3")
    assert out[1] == "  2 added, 1 modified, 1 deleted, 0 opaque; 6.03kB of files"
    assert out[2:] == [
        "         6kB  data/",
        "  M      6kB    big  (size 5kB→6kB)",
        "  D     -3kB    old",
        "         30B  etc/",
        "  A      10B    motd",
        "  A      20B    same",
    ]


def test_layers_bad_layer_number(known: KnownImages) -> None:
    res = known.lamina.fail("layers", "--layer", "5", "test/a")
    assert res.code == 3 and res.err.strip() == "lamina: --layer 5: test/a has layers 1 to 4"


def test_opaque_directory(known: KnownImages) -> None:
    src = f"oci:{known.opaque}"
    layers = known.lamina.run("layers", "--json", src).json()
    assert _changes(layers[1]) == [("/d", "opaque", 30), ("/d/z", "added", 5)]
    assert layers[1]["changes"][0]["hidden_entries"] == 2
    text = known.lamina.run("layers", "--layer", "2", src).out.splitlines()
    assert text[2:] == ["  O     -30B  d/  (hides 2 entries)", "  A       5B    z"]
    res = known.lamina.fail("which", src, "/d/x")
    assert res.code == 2
    assert "hidden by layer 2 (opaque /d)" in res.out
    assert known.lamina.run("which", "--json", src, "/d/z").json()["layer"] == 2


@pytest.mark.parametrize("where", [0, 1, 2], ids=["store", "oci", "docker-archive"])
def test_which(known: KnownImages, where: int) -> None:
    a, b = known.sources("a")[where], known.sources("b")[where]
    tool = known.lamina.run("which", "--json", a, "/bin/tool").json()
    assert tool["layer"] == 4
    assert (tool["provider"]["mode"], tool["provider"]["size"]) == ("0700", 1000)
    assert [(v["layer"], v["mode"], v["fate"], v["by_layer"]) for v in tool["lower"]] == [
        (1, "0755", "overwritten", 4)]
    conf = known.lamina.run("which", "--json", b, "etc/conf").json()
    assert (conf["path"], conf["layer"], conf["provider"]["size"]) == ("/etc/conf", 2, 150)
    assert [(v["layer"], v["size"]) for v in conf["lower"]] == [(1, 100)]
    if where == 0:
        link = known.lamina.run("which", "--json", a, "/bin/t").json()
        assert (link["layer"], link["provider"]["type"], link["provider"]["link"]) == (
            1, "symlink", "tool")


def test_which_deleted_and_missing(known: KnownImages) -> None:
    res = known.lamina.fail("which", "test/a", "/data/old")
    assert res.code == 2
    assert res.err.strip() == ("lamina: /data/old is not in the final root of test/a: "
                               "deleted by layer 3")
    assert "deleted by layer 3" in res.out
    res = known.lamina.fail("which", "--json", "test/b", "/opt/keep")
    assert res.code == 2
    (lower,) = res.json()["lower"]
    assert (lower["layer"], lower["fate"], lower["by_layer"], lower["at"]) == (
        1, "deleted", 3, "/opt")
    assert known.lamina.fail("which", "test/a", "/nope").err.strip() == (
        "lamina: /nope is in no layer of the image")


@pytest.mark.parametrize("where", [0, 1, 2], ids=["store", "oci", "docker-archive"])
def test_history_from_any_source(known: KnownImages, where: int) -> None:
    rows = known.lamina.run("history", "--json", known.sources("b")[where]).json()
    assert [r["created_by"] for r in rows] == [
        "lamina import b3", "lamina import shared", "lamina import base"]
    store_rows = known.lamina.run("history", "--json", "test/b").json()
    # The docker archive stores layers uncompressed: other digests and sizes.
    if where < 2:
        assert rows == store_rows


def test_bad_sources(known: KnownImages, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lam = known.lamina
    res = lam.fail("layers", f"oci:{tmp_path}/missing")
    assert res.code == 3 and "no such file or directory" in res.err
    res = lam.fail("history", f"oci:{known.oci}")
    assert res.code == 3 and "holds 2 images: name one" in res.err
    # a registry source: no network here, so a one-line transport error (exit 6)
    res = lam.fail("history", "docker://127.0.0.1:9/x:1")
    assert res.code == 6 and "cannot connect to 127.0.0.1:9" in res.err
    assert len(res.err.splitlines()) == 1


@pytest.fixture(scope="module")
def merged_usr(tmp_path_factory: pytest.TempPathFactory) -> Lamina:
    """A two-layer merged-/usr image, as Debian's: layer 1 has ``bin -> usr/bin``,
    ``sbin -> /usr/bin`` (absolute), ``usr/bin/sh``, ``usr/lib/os-release``, a link
    loop; layer 2 rewrites ``usr/bin/sh``."""
    work = tmp_path_factory.mktemp("merged-usr")
    one, two = work / "one", work / "two"
    (one / "usr/bin").mkdir(parents=True)
    (one / "usr/lib").mkdir()
    (one / "usr/bin/sh").write_bytes(b"#!sh v1")
    (one / "usr/lib/os-release").write_bytes(b"ID=debian")
    os.symlink("usr/bin", one / "bin")
    os.symlink("/usr/bin", one / "sbin")
    os.symlink("../../usr/lib/os-release", one / "usr/bin/rel")   # a symlink as last part
    os.symlink("loop", one / "loop")
    shutil.copytree(one, two, symlinks=True)
    (two / "usr/bin/sh").write_bytes(b"#!sh version 2")
    lamina = Lamina(work / "store", work)
    lamina.run("import", "deb", one, two)
    return lamina


def test_which_follows_symlinked_directories_in_the_root(merged_usr: Lamina) -> None:
    res = merged_usr.run("which", "--json", "deb", "/bin/sh").json()
    assert (res["path"], res["resolved"], res["layer"]) == ("/bin/sh", "/usr/bin/sh", 2)
    assert res["provider"]["size"] == len(b"#!sh version 2")
    assert [(v["layer"], v["fate"]) for v in res["lower"]] == [(1, "overwritten")]
    text = merged_usr.run("which", "deb", "/bin/sh").out
    assert text.splitlines()[0] == "/bin/sh \u2192 /usr/bin/sh"
    # An absolute target stays inside the image's root, as a chroot's lookup does,
    # and ".." never climbs above it.
    for path in ("/sbin/sh", "sbin/../bin/sh", "/../../bin/./sh"):
        got = merged_usr.run("which", "--json", "deb", path).json()
        assert (got["resolved"], got["layer"]) == ("/usr/bin/sh", 2), path
    # The last component is the symlink itself unless asked to follow it.
    link = merged_usr.run("which", "--json", "deb", "/bin/rel").json()
    assert (link["resolved"], link["provider"]["type"]) == ("/usr/bin/rel", "symlink")
    target = merged_usr.run("which", "--json", "-L", "deb", "/bin/rel").json()
    assert (target["resolved"], target["layer"]) == ("/usr/lib/os-release", 1)
    # A path the layers name literally is still reported as itself.
    assert merged_usr.run("which", "--json", "deb", "/usr/bin/sh").json()["resolved"] \
        == "/usr/bin/sh"


def test_which_reports_missing_and_looping_paths_in_one_line(merged_usr: Lamina) -> None:
    res = merged_usr.fail("which", "deb", "/bin/bash")
    assert (res.code, res.err) == (
        2, "lamina: /bin/bash (\u2192 /usr/bin/bash) is in no layer of the image\n")
    res = merged_usr.fail("which", "deb", "/loop/x")
    assert (res.code, res.err) == (
        3, "lamina: /loop/x: too many levels of symbolic links\n")
