"""#10.18: symlinks in an OCI layout (a directory or a tar of one).  A link that stays
inside the layout is followed (git checkouts and some tools make them); one leading out,
or to nothing, is one line naming the file, not "no oci-layout"."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from lamina_testing import Lamina


@pytest.fixture
def layout(lamina: Lamina, tmp_path: Path) -> Path:
    snap = tmp_path / "snap"
    (snap / "etc").mkdir(parents=True)
    (snap / "etc" / "x").write_text("hi\n")
    lamina.run("import", "t/x", snap)
    lamina.run("save", "t/x", "--format", "oci", "-o", tmp_path / "layout")
    return tmp_path / "layout"


def _relink(lay: Path, name: str, target: str, moved_to: Path | None = None) -> None:
    """Make ``lay/name`` a symlink to ``target``, its bytes moved to ``moved_to``."""
    if moved_to is not None:
        shutil.copyfile(lay / name, moved_to)
    (lay / name).unlink()
    os.symlink(target, lay / name)


def _tar(lay: Path) -> Path:
    out = lay.with_suffix(".tar")
    with tarfile.open(out, "w") as tar:
        for entry in sorted(lay.rglob("*")):
            tar.add(entry, entry.relative_to(lay).as_posix(), recursive=False)
    return out


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_a_symlink_inside_the_layout_is_followed(lamina: Lamina, layout: Path,
                                                  as_tar: bool) -> None:
    _relink(layout, "index.json", "real-index.json", layout / "real-index.json")
    (layout / "meta").mkdir()
    _relink(layout, "oci-layout", "meta/oci-layout", layout / "meta" / "oci-layout")
    src = _tar(layout) if as_tar else layout
    lamina.run("rmi", "t/x")
    assert lamina.run("load", src).out.strip() == "Loaded image: t/x:latest"


@pytest.mark.parametrize("name", ["index.json", "oci-layout"])
@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_a_symlink_leading_out_of_a_directory_is_named(lamina: Lamina, layout: Path,
                                                       tmp_path: Path, name: str,
                                                       absolute: bool) -> None:
    outside = tmp_path / f"outside-{name}"
    _relink(layout, name, str(outside) if absolute else f"../{outside.name}", outside)
    res = lamina.fail("load", layout)
    assert (res.code, res.err) == (
        3, f"lamina: {layout}: {name} is a symlink leading outside the directory\n")


def test_a_symlink_leading_out_of_a_tar_is_named(lamina: Lamina, layout: Path,
                                                 tmp_path: Path) -> None:
    _relink(layout, "index.json", "../index.json", tmp_path / "index.json")
    archive = _tar(layout)
    res = lamina.fail("load", archive)
    assert (res.code, res.err) == (
        3, f"lamina: {archive}: index.json is a symlink leading outside the archive\n")


def test_a_dangling_or_missing_index_is_named(lamina: Lamina, layout: Path) -> None:
    _relink(layout, "index.json", "gone.json")
    res = lamina.fail("load", layout)
    assert (res.code, res.err) == (3, f"lamina: {layout}: index.json is a symlink to nothing\n")
    (layout / "index.json").unlink()
    res = lamina.fail("load", layout)
    assert (res.code, res.err) == (2, f"lamina: {layout}: no index.json\n")
