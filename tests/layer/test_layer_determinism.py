"""The same content gives the same bytes: diff_id and compressed digest."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard
from layer_helpers import digest_of, layer_bytes

from lamina.errors import InvalidInput
from lamina.layer import LayerOptions, diff_trees, open_tar_stream, write_tree

SDE = 1_700_000_000


def make_tree(root: Path, mtime: int) -> Path:
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("lamina\n")
    (root / "etc" / "big").write_bytes(os.urandom(1000) * 3000)  # 3 MB: several blocks
    (root / "a-b").write_text("sorts after a/ subtree")
    (root / "a").mkdir()
    (root / "a" / "z").write_text("z")
    os.symlink("etc/hostname", root / "link")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    return root


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_same_tree_touched_later_gives_identical_bytes_under_sde(
    tmp_path: Path, compression: str
) -> None:
    one = make_tree(tmp_path / "one", SDE + 10)
    two = make_tree(tmp_path / "two", SDE + 99_999)
    (two / "etc" / "big").write_bytes((one / "etc" / "big").read_bytes())
    os.utime(two / "etc" / "big", (SDE + 5, SDE + 5))
    opts = LayerOptions(compression=compression, source_date_epoch=SDE)  # type: ignore[arg-type]
    data1, info1 = layer_bytes(diff_trees(None, one), opts)
    data2, info2 = layer_bytes(diff_trees(None, two), opts)
    assert info1 == info2
    assert digest_of(data1) == digest_of(data2)
    # Different threads, same bytes.
    data3, _ = layer_bytes(
        diff_trees(None, two),
        LayerOptions(compression=compression, source_date_epoch=SDE, threads=1),  # type: ignore[arg-type]
    )
    assert data3 == data1
    # Without clamping the mtimes show.
    data4, info4 = layer_bytes(diff_trees(None, two), LayerOptions(compression=compression))  # type: ignore[arg-type]
    assert info4.diff_id != info1.diff_id


def test_write_tree_equals_write_changeset_of_full_diff(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", SDE)
    (root / "a" / "sub").mkdir()
    (root / "a" / "sub" / "x").write_text("x")
    buf = io.BytesIO()
    info = write_tree(root, buf, LayerOptions())
    data, info2 = layer_bytes(diff_trees(None, root))
    assert info == info2 and buf.getvalue() == data


def test_mtimes_are_clamped_not_replaced(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", SDE + 500)
    os.utime(root / "a" / "z", (1000, 1000))  # older than SDE: kept
    data, _ = layer_bytes(diff_trees(None, root), LayerOptions(source_date_epoch=SDE))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tf:
        mtimes = {m.name: m.mtime for m in tf.getmembers()}
    assert mtimes["a/z"] == 1000
    assert mtimes["etc/hostname"] == SDE


def test_gzip_header_has_no_time_no_name_and_decompresses_everywhere(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", SDE)
    data, info = layer_bytes(diff_trees(None, root), LayerOptions(compression="gzip"))
    # RFC 1952: ID1 ID2 CM=8 FLG=0 (no FNAME/FCOMMENT/FEXTRA) MTIME=0 XFL=0 OS=255
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    raw = gzip.decompress(data)
    assert len(raw) == info.uncompressed_size
    assert digest_of(raw) == str(info.diff_id)


def test_zstd_frame_decompresses_and_has_no_variable_fields(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", SDE)
    data, info = layer_bytes(diff_trees(None, root), LayerOptions(compression="zstd"))
    assert data[:4] == b"\x28\xb5\x2f\xfd"
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    assert digest_of(raw) == str(info.diff_id)
    data2, _ = layer_bytes(diff_trees(None, root), LayerOptions(compression="zstd", threads=3))
    assert data2 == data


def test_tar_layout_is_sorted_numeric_owner_and_minimal(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", SDE)
    data, info = layer_bytes(diff_trees(None, root), LayerOptions(compression="none"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    # Directories before their contents; a whole subtree before a later sibling.
    assert names == ["a", "a/z", "a-b", "etc", "etc/big", "etc/hostname", "link"]
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert all(not m.pax_headers for m in members)  # nothing needed PAX here
    assert len(data) == info.uncompressed_size
    assert len(data) % 512 == 0 and data[-1024:] == bytes(1024)
    assert info.entries == 7
    # The directory entries are written with a trailing slash, like Docker's.
    assert data[: data.index(b"\0")] == b"a/"


def test_pax_headers_only_for_what_does_not_fit(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    long = "n" * 180
    (root / long).write_text("x")
    (root / "x").write_text("y")
    os.setxattr(root / "x", "user.a", b"1")
    data, _ = layer_bytes(diff_trees(None, root), LayerOptions(compression="none"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        by_name = {m.name: m for m in tf.getmembers()}
    assert by_name[long].pax_headers == {"path": long}
    assert by_name["x"].pax_headers == {"SCHILY.xattr.user.a": "1"}


def test_open_tar_stream_detects_all_three(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", SDE)
    raws = set()
    for compression in ["gzip", "zstd", "none"]:
        data, _ = layer_bytes(diff_trees(None, root), LayerOptions(compression=compression))  # type: ignore[arg-type]
        with open_tar_stream(io.BytesIO(data)) as f:
            raws.add(f.read())
    assert len(raws) == 1


def test_options_are_validated() -> None:
    with pytest.raises(InvalidInput, match="unknown layer compression"):
        LayerOptions(compression="bzip2")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="out of range"):
        LayerOptions(compression="gzip", level=9)
    with pytest.raises(InvalidInput, match="threads"):
        LayerOptions(threads=0)
