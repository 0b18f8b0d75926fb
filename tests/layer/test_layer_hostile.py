"""Hostile archives are refused with UnsafeArchive before anything lands outside the
target; the sentinel directory beside the target must come out untouched."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from layer_helpers import apply_bytes, make_tar, member, tree_listing

from lamina.errors import InvalidInput, UnsafeArchive

DIR, SYM, LNK = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def untouched(sentinel: Path) -> None:
    assert tree_listing(sentinel) == ["secret"]
    assert (sentinel / "secret").read_text() == "keep me"


def refuse(data: bytes, target: Path, match: str) -> None:
    with pytest.raises(UnsafeArchive, match=match):
        apply_bytes(data, target)


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../evil", "a/b/../../../evil"])
def test_dotdot_escape_is_refused(arena: tuple[Path, Path], name: str) -> None:
    target, sentinel = arena
    data = make_tar([member("ok", data=b"fine"), member(name, data=b"pwned")])
    refuse(data, target, r"escapes the target with '\.\.'")
    untouched(sentinel)
    assert not (target.parent / "evil").exists()


def test_dotdot_inside_the_target_is_cleaned(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    apply_bytes(make_tar([member("a/../b", data=b"x")]), target)
    assert (target / "b").read_bytes() == b"x"
    untouched(sentinel)


def test_absolute_names_land_inside_the_target(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    name = str(sentinel / "secret")  # an absolute host path
    apply_bytes(make_tar([member(name, data=b"overwritten?")]), target)
    untouched(sentinel)
    assert (target / name.lstrip("/")).read_bytes() == b"overwritten?"


def test_parent_symlink_climbing_out_is_refused(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    data = make_tar(
        [
            member("link", SYM, linkname="../sentinel"),
            member("link/evil", data=b"pwned"),
        ]
    )
    refuse(data, target, "symlink that points outside the target")
    untouched(sentinel)


def test_parent_symlink_climbing_out_through_a_chain_is_refused(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    data = make_tar(
        [
            member("a", DIR, mode=0o755),
            member("a/up", SYM, linkname="../.."),
            member("hop", SYM, linkname="a/up/sentinel"),
            member("hop/evil", data=b"pwned"),
        ]
    )
    refuse(data, target, "outside the target")
    untouched(sentinel)


def test_absolute_parent_symlink_is_followed_inside_the_target(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    data = make_tar(
        [
            member("link", SYM, linkname=str(sentinel)),
            member("link/evil", data=b"contained"),
        ]
    )
    apply_bytes(data, target)
    untouched(sentinel)
    # As in a chroot: /…/sentinel means <target>/…/sentinel.
    assert (target / str(sentinel).lstrip("/") / "evil").read_bytes() == b"contained"


def test_final_symlink_is_replaced_not_written_through(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    os.symlink(sentinel / "secret", target / "f")  # in the lower layer
    apply_bytes(make_tar([member("f", data=b"new")]), target)
    untouched(sentinel)
    assert not (target / "f").is_symlink()
    assert (target / "f").read_bytes() == b"new"


def test_directory_entry_replaces_a_lower_symlink(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    os.symlink(sentinel, target / "d")
    apply_bytes(make_tar([member("d", DIR, mode=0o755), member("d/x", data=b"in")]), target)
    untouched(sentinel)
    assert (target / "d").is_dir() and not (target / "d").is_symlink()
    assert (target / "d" / "x").read_bytes() == b"in"


def test_replacing_a_directory_by_a_symlink_invalidates_resolved_parents(
    arena: tuple[Path, Path],
) -> None:
    """'d/a' makes lamina remember 'd' is a directory; a later entry turns 'd' into a
    symlink to the host's sentinel; 'd/x' must not follow the stale knowledge."""
    target, sentinel = arena
    data = make_tar(
        [
            member("d", DIR, mode=0o755),
            member("d/a", data=b"1"),
            member("d", SYM, linkname=str(sentinel)),
            member("d/x", data=b"pwned?"),
        ]
    )
    apply_bytes(data, target)
    untouched(sentinel)
    assert (target / str(sentinel).lstrip("/") / "x").read_bytes() == b"pwned?"


@pytest.mark.parametrize(
    "linkname,error,match",
    [
        ("../sentinel/secret", UnsafeArchive, "escapes the target"),
        ("up/sentinel/secret", UnsafeArchive, "outside the target"),
        ("abs/secret", InvalidInput, "not in the target"),
    ],
)
def test_hardlinks_out_of_the_target_are_refused(
    arena: tuple[Path, Path], linkname: str, error: type[Exception], match: str
) -> None:
    target, sentinel = arena
    data = make_tar(
        [
            member("up", SYM, linkname=".."),  # <target>/.. is outside
            member("abs", SYM, linkname=str(sentinel)),  # chroot: <target>/<sentinel>
            member("stolen", LNK, linkname=linkname),
        ]
    )
    with pytest.raises(error, match=match):
        apply_bytes(data, target)
    untouched(sentinel)
    assert os.stat(sentinel / "secret").st_nlink == 1
    assert not (target / "stolen").exists()


def test_hardlink_with_absolute_name_stays_inside(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    data = make_tar([member("a", data=b"x"), member("b", LNK, linkname="/a")])
    apply_bytes(data, target)
    assert os.stat(target / "a").st_ino == os.stat(target / "b").st_ino
    untouched(sentinel)


def test_hardlink_to_a_directory_is_refused(arena: tuple[Path, Path]) -> None:
    target, _ = arena
    data = make_tar([member("d", DIR, mode=0o755), member("l", LNK, linkname="d")])
    with pytest.raises(UnsafeArchive, match="points at directory"):
        apply_bytes(data, target)


@pytest.mark.parametrize("name", [".wh.", "d/.wh.", ".wh..", "d/.wh..", ".wh...", "d/.wh..."])
def test_whiteouts_of_nothing_dot_or_dotdot_are_refused(
    arena: tuple[Path, Path], name: str
) -> None:
    target, sentinel = arena
    (target / "d").mkdir()
    (target / "d" / "keep").write_text("lower")
    refuse(make_tar([member(name)]), target, "not a sibling")
    assert (target / "d" / "keep").read_text() == "lower"
    untouched(sentinel)


def test_whiteout_through_an_escaping_symlink_is_refused(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    os.symlink("../sentinel", target / "ln")
    refuse(make_tar([member("ln/.wh.secret")]), target, "outside the target")
    untouched(sentinel)


def test_opaque_whiteout_under_an_absolute_symlink_stays_inside(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    os.symlink(sentinel, target / "ln")
    apply_bytes(make_tar([member("ln/.wh..wh..opq")]), target)
    untouched(sentinel)


def test_whiteout_of_a_symlink_to_a_directory_removes_only_the_link(
    arena: tuple[Path, Path],
) -> None:
    target, sentinel = arena
    os.symlink(sentinel, target / "d")
    (target / "tree").mkdir()
    os.symlink(sentinel, target / "tree" / "inner")
    apply_bytes(make_tar([member(".wh.d"), member(".wh.tree")]), target)
    assert not os.path.lexists(target / "d")
    assert not os.path.lexists(target / "tree")
    untouched(sentinel)


@pytest.mark.parametrize(
    "entry",
    [
        member(".", SYM, linkname="/"),
        member("./", SYM, linkname="/etc"),
        member(".", data=b"file"),
        member("/", SYM, linkname=".."),
    ],
    ids=["dot-symlink", "dotslash-symlink", "dot-file", "slash-symlink"],
)
def test_entries_replacing_the_root_are_refused(
    arena: tuple[Path, Path], entry: tuple[tarfile.TarInfo, bytes]
) -> None:
    target, sentinel = arena
    refuse(make_tar([entry]), target, "target root")
    assert target.is_dir() and not target.is_symlink()
    untouched(sentinel)


def test_root_directory_entry_is_accepted(arena: tuple[Path, Path]) -> None:
    target, _ = arena
    apply_bytes(make_tar([member("./", DIR, mode=0o750), member("./f", data=b"x")]), target)
    assert (target / "f").read_bytes() == b"x"
    assert os.stat(target).st_mode & 0o777 == 0o750


def test_symlink_loops_are_refused(arena: tuple[Path, Path]) -> None:
    target, _ = arena
    data = make_tar(
        [member("a", SYM, linkname="b"), member("b", SYM, linkname="a"), member("a/x", data=b"")]
    )
    refuse(data, target, "too many levels of symlinks")


def test_nothing_is_written_after_the_refused_entry(arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    data = make_tar([member("first", data=b"1"), member("../x"), member("after", data=b"2")])
    with pytest.raises(UnsafeArchive):
        apply_bytes(data, target)
    assert tree_listing(target) == ["first"]
    untouched(sentinel)


# -- names no file system takes (#10.4): refused whole, before any directory is made ----
DEEP = "/".join(["a"] * 100_000) + "/f"


def _pax(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
         pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    """An entry whose real name (and link) are given only in its PAX header."""
    info, body = member("placeholder", kind, data=data, linkname="placeholder-link"
                        if linkname else "")
    info.pax_headers = {"path": name, **({"linkpath": linkname} if linkname else {}),
                        **(pax or {})}
    return info, body


@pytest.mark.parametrize(("entry", "match"), [
    (_pax(DEEP, data=b"x"), r"is 200001 bytes long; file names are at most 4095 bytes"),
    (_pax("a/b\0c", data=b"x"), r"tar entry name 'a/b\\x00c' contains a NUL byte"),
    (_pax("l", SYM, linkname="x\0y"), r"link target 'x\\x00y' contains a NUL byte"),
    (_pax("h", LNK, linkname="a\0"), r"link target 'a\\x00' contains a NUL byte"),
    (_pax("l", SYM, linkname="x" * 5000), r"link target 'xxx.*is 5000 bytes long"),
    (_pax("d/" + "n" * 256, data=b"x"), "component of 256 bytes; at most 255"),
    (_pax("f", data=b"x", pax={"SCHILY.xattr.user.a\0b": "v"}), "name holds a NUL byte"),
], ids=["deep", "nul", "symlink-nul", "hardlink-nul", "long-symlink", "long-component",
        "xattr-nul"])
def test_names_no_file_system_takes_are_refused_before_anything_is_made(
        arena: tuple[Path, Path], entry: tuple[tarfile.TarInfo, bytes], match: str) -> None:
    target, sentinel = arena
    with pytest.raises(InvalidInput, match=match) as err:
        apply_bytes(make_tar([entry]), target)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    assert tree_listing(target) == []
    untouched(sentinel)


def test_a_whiteout_of_the_longest_name_is_accepted(arena: tuple[Path, Path]) -> None:
    target, _ = arena
    longest = "n" * 255
    apply_bytes(make_tar([member(longest, data=b"x")]), target)
    apply_bytes(make_tar([member(".wh." + longest)]), target)
    assert tree_listing(target) == []


def test_a_tree_as_deep_as_names_allow_is_replaced_without_recursion(
        arena: tuple[Path, Path]) -> None:
    # 2000 levels (a 4001-byte name): more than Python's recursion limit.  A later
    # layer replaces the top directory with a file, and whites it out.
    target, _ = arena
    deep = "/".join(["d"] * 2000)
    apply_bytes(make_tar([member(deep + "/f", data=b"x")]), target)
    apply_bytes(make_tar([member("d", data=b"now a file")]), target)
    assert (target / "d").read_bytes() == b"now a file"
    apply_bytes(make_tar([member(deep[:-2] + "/f", data=b"x")]), target / "again")
    apply_bytes(make_tar([member(".wh.d")]), target / "again")
    assert tree_listing(target / "again") == []
