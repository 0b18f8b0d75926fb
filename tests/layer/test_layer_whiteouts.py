"""Whiteouts, opaque directories and type changes (image-spec layer.md)."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from layer_helpers import apply_bytes, layer_bytes, make_tar, member, snapshot, tree_listing

from lamina.layer import ApplyOptions, ChangeKind, diff_trees

DIR, SYM = tarfile.DIRTYPE, tarfile.SYMTYPE
Build = Callable[[Path, dict[str, object]], Path]


def lower(build: Build, root: Path) -> Path:
    return build(
        root,
        {
            "d/old": "lower",
            "d/sub/deep": "lower",
            "d/kept-by-layer": "lower",
            "other": "lower",
        },
    )


@pytest.mark.parametrize("opaque_first", [True, False])
def test_opaque_hides_only_lower_entries_wherever_it_sits(
    tmp_path: Path, build: Build, opaque_first: bool
) -> None:
    target = lower(build, tmp_path / "t")
    opq = member("d/.wh..wh..opq")
    entries = [member("d/", DIR, mode=0o755), member("d/new", data=b"layer")]
    entries.append(member("d/kept-by-layer", data=b"layer"))
    entries = [entries[0], opq, *entries[1:]] if opaque_first else [*entries, opq]
    apply_bytes(make_tar(entries), target)
    assert tree_listing(target) == ["d", "d/kept-by-layer", "d/new", "other"]
    assert (target / "d" / "kept-by-layer").read_text() == "layer"


def test_opaque_clears_lower_contents_of_a_directory_the_layer_also_lists(
    tmp_path: Path, build: Build
) -> None:
    target = lower(build, tmp_path / "t")
    data = make_tar(
        [member("d/sub/", DIR, mode=0o700), member("d/.wh..wh..opq"), member("d/sub/n", data=b"1")]
    )
    apply_bytes(data, target)
    # d/sub was re-listed by this layer: it stays, but its lower child is hidden.
    assert tree_listing(target) == ["d", "d/sub", "d/sub/n", "other"]
    assert os.stat(target / "d" / "sub").st_mode & 0o777 == 0o700


def test_whiteout_deletes_lower_file_and_directory_tree(tmp_path: Path, build: Build) -> None:
    target = lower(build, tmp_path / "t")
    apply_bytes(
        make_tar([member("d/.wh.sub"), member(".wh.other"), member("d/.wh.nothing")]), target
    )
    assert tree_listing(target) == ["d", "d/kept-by-layer", "d/old"]


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_whiteout_never_removes_what_the_same_layer_adds(
    tmp_path: Path, build: Build, whiteout_first: bool
) -> None:
    target = lower(build, tmp_path / "t")
    wh = member(".wh.other")
    new = member("other", data=b"from this layer")
    apply_bytes(make_tar([wh, new] if whiteout_first else [new, wh]), target)
    assert (target / "other").read_text() == "from this layer"


def test_whiteouts_off_extracts_them_as_files(tmp_path: Path, build: Build) -> None:
    target = lower(build, tmp_path / "t")
    apply_bytes(make_tar([member(".wh.other")]), target, ApplyOptions(whiteouts=False))
    assert (target / ".wh.other").exists() and (target / "other").exists()


def test_aufs_metadata_is_ignored(tmp_path: Path, build: Build) -> None:
    target = lower(build, tmp_path / "t")
    apply_bytes(make_tar([member(".wh..wh.plnk", DIR, mode=0o700)]), target)
    assert tree_listing(target) == tree_listing(lower(build, tmp_path / "again"))


@pytest.mark.parametrize(
    "entries,check",
    [
        # lower file -> directory
        ([member("other/", DIR, mode=0o755), member("other/x", data=b"x")], "dir"),
        # lower directory (with contents) -> file
        ([member("d", data=b"now a file")], "file"),
        # lower file -> symlink
        ([member("other", SYM, linkname="d/old")], "symlink"),
    ],
    ids=["file-to-dir", "dir-to-file", "file-to-symlink"],
)
def test_type_changes_replace_the_lower_entry(
    tmp_path: Path, build: Build, entries: list[tuple[tarfile.TarInfo, bytes]], check: str
) -> None:
    target = lower(build, tmp_path / "t")
    apply_bytes(make_tar(entries), target)
    if check == "dir":
        assert (target / "other" / "x").read_bytes() == b"x"
    elif check == "file":
        assert (target / "d").read_bytes() == b"now a file"
        assert not any(p.startswith("d/") for p in tree_listing(target))
    else:
        assert os.readlink(target / "other") == "d/old"


def test_diff_records_type_changes_deletions_and_parents(tmp_path: Path, build: Build) -> None:
    a = build(
        tmp_path / "a",
        {
            "dir2file/x": "1",
            "file2dir": "f",
            "file2link": "f",
            "gone/deep/er": "1",
            "same/unchanged": "u",
            "same/changed": "1",
            "p/q/r/leaf": "1",
        },
    )
    b = build(
        tmp_path / "b",
        {
            "dir2file": "now file",
            "file2dir/inner": "x",
            "file2link": ("->", "dir2file"),
            "same/unchanged": "u",
            "same/changed": "22",
            "p/q/r/leaf": "1",
            "p/q/r/new": "n",
            "added/a": "a",
        },
    )
    for rel in ["same/unchanged", "p/q/r/leaf"]:
        st = os.stat(a / rel)
        os.utime(b / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
    cs = diff_trees(a, b)
    kinds = {c.path: c.kind for c in cs}
    assert kinds == {
        "added": ChangeKind.ADDED,
        "added/a": ChangeKind.ADDED,
        "dir2file": ChangeKind.MODIFIED,
        "file2dir": ChangeKind.MODIFIED,
        "file2dir/inner": ChangeKind.ADDED,
        "file2link": ChangeKind.MODIFIED,
        "gone": ChangeKind.DELETED,
        "p": ChangeKind.MODIFIED,  # parents of a change carry their own entry
        "p/q": ChangeKind.MODIFIED,
        "p/q/r": ChangeKind.MODIFIED,
        "p/q/r/new": ChangeKind.ADDED,
        "same": ChangeKind.MODIFIED,
        "same/changed": ChangeKind.MODIFIED,
    }
    assert cs.deleted == ["gone"]
    names = [c.tar_name for c in cs]
    assert names == [
        ".wh.gone",
        "added/",
        "added/a",
        "dir2file",
        "file2dir/",
        "file2dir/inner",
        "file2link",
        "p/",
        "p/q/",
        "p/q/r/",
        "p/q/r/new",
        "same/",
        "same/changed",
    ]
    target = build(tmp_path / "t", {})
    os.rmdir(target)
    import shutil

    shutil.copytree(a, target, symlinks=True)
    apply_bytes(layer_bytes(cs)[0], target)
    assert tree_listing(target) == tree_listing(b)
    assert snapshot(target)["dir2file"][4] == b"now file"


def test_touched_file_is_modified_but_directory_mtime_alone_is_not(
    tmp_path: Path, build: Build
) -> None:
    a = build(tmp_path / "a", {"d/f": "same", "e/g": "same"})
    b = build(tmp_path / "b", {"d/f": "same", "e/g": "same"})
    for rel in ["d/f", "e/g", "d", "e"]:
        os.utime(b / rel, ns=(0, os.stat(a / rel).st_mtime_ns))
    os.utime(b / "d" / "f", (5, 5))  # touched, same bytes
    os.utime(b / "e", (7, 7))  # only the directory's mtime differs
    cs = diff_trees(a, b)
    assert {c.path: c.kind for c in cs} == {"d": ChangeKind.MODIFIED, "d/f": ChangeKind.MODIFIED}


def test_xattr_and_mode_changes_are_modifications(tmp_path: Path, build: Build) -> None:
    a = build(tmp_path / "a", {"x": "1", "m": "1"})
    b = build(tmp_path / "b", {"x": "1", "m": "1"})
    for rel in ["x", "m"]:
        os.utime(b / rel, ns=(0, os.stat(a / rel).st_mtime_ns))
    os.setxattr(b / "x", "user.k", b"v")
    os.chmod(b / "m", 0o4755)
    assert sorted(diff_trees(a, b).modified) == ["m", "x"]
