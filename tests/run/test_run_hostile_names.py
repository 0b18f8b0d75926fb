"""Layers with names no file system takes (#10.4), through the CLI: one clear line, the
exit code of bad input, and nothing left behind by ``unpack``, ``run``, ``layers`` or
``which`` (no RecursionError, no ValueError, no directories in the target or the
store's tmp area)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers, entry, make_tar, store_image

from lamina.store.rmtree import remove_tree
from lamina.store.store import Store
from lamina_testing import Lamina


def _pax(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
         linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info, body = entry("placeholder", kind, data=data,
                       linkname="placeholder" if linkname else "")
    info.pax_headers = {"path": name, **({"linkpath": linkname} if linkname else {})}
    return info, body


HOSTILE = {
    "deep": (_pax("/".join(["a"] * 100_000) + "/f", data=b"x"),
             "is 200001 bytes long; file names are at most 4095 bytes"),
    "nul": (_pax("etc/pass\0wd", data=b"x"), "contains a NUL byte"),
    "nul-link": (_pax("bin/sh", tarfile.SYMTYPE, linkname="busy\0box"),
                 "link target 'busy\\x00box' contains a NUL byte"),
}


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Lamina]:
    lam = Lamina(tmp_path / "store", tmp_path)
    with Store(lam.root) as store:
        ok = make_tar([entry("etc/", tarfile.DIRTYPE, mode=0o755), entry("etc/ok", data=b"1")])
        for name, (member, _) in HOSTILE.items():
            store_image(store, f"bad/{name}", [ok, make_tar([member])])
        # Within PATH_MAX, but ~2000 levels deep: a target path of any length pushes it
        # past the kernel's limit half-way, after ~2000 directories were made.
        store_image(store, "bad/toolong", [ok, make_tar([entry("a/" * 2040 + "f", data=b"x")])])
    yield lam
    remove_tree(tmp_path)  # pytest's own cleanup recurses on depth


def _one_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, err
    assert "Traceback" not in err and "RecursionError" not in err


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_unpack_refuses_and_leaves_the_target_as_it_was(hostile: Lamina, tmp_path: Path,
                                                        name: str) -> None:
    match = HOSTILE[name][1]
    res = hostile.fail("unpack", f"bad/{name}", tmp_path / "new" / "root")
    assert res.code == 3, res.err
    assert match in res.err
    _one_line(res.err)
    assert not (tmp_path / "new").exists()      # made by the unpack: removed
    (tmp_path / "empty").mkdir()
    res = hostile.fail("unpack", f"bad/{name}", tmp_path / "empty")
    assert res.code == 3
    assert os.listdir(tmp_path / "empty") == []  # given empty: left empty


def test_a_tree_too_deep_for_the_target_is_removed_without_recursion(hostile: Lamina,
                                                                     tmp_path: Path) -> None:
    # On a tmpfs when there is one: ~2000 mkdirs and rmdirs take seconds on ext4 here.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    target = Path(tempfile.mkdtemp(prefix="lamina-deep-", dir=shm or tmp_path))
    try:
        res = hostile.fail("unpack", "bad/toolong", target)
        assert res.code == 3, res.err   # the input's kind, not 1
        assert "File name too long" in res.err
        _one_line(res.err)
        assert os.listdir(target) == []
    finally:
        remove_tree(target)


@pytest.mark.parametrize("snapshotter", ["walk", "overlay"])
@pytest.mark.parametrize("name", ["deep", "nul"])
def test_run_refuses_and_leaves_nothing_in_the_store(hostile: Lamina, name: str,
                                                     snapshotter: str) -> None:
    if snapshotter == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay needs root")
    res = hostile.fail("run", "--snapshotter", snapshotter, f"bad/{name}", "true")
    assert res.code == 3, res.err
    assert HOSTILE[name][1] in res.err
    _one_line(res.err)
    assert_no_leftovers(hostile.root)


def test_run_of_a_tree_too_deep_for_the_store_is_bad_input(hostile: Lamina) -> None:
    # The snapshot is extracted under the store's tmp/, whose path pushes the name past
    # the kernel's limit: the image's fault (3), said once, nothing left in the store.
    res = hostile.fail("run", "--snapshotter", "walk", "bad/toolong", "true")
    assert res.code == 3, res.err
    assert "File name too long" in res.err
    _one_line(res.err)
    assert_no_leftovers(hostile.root)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_layers_and_which_say_one_line(hostile: Lamina, name: str) -> None:
    for args in (("layers", f"bad/{name}"), ("which", f"bad/{name}", "/etc/ok")):
        res = hostile.fail(*args)
        assert res.code == 3, res.err
        assert HOSTILE[name][1] in res.err
        _one_line(res.err)
