"""``lamina import`` never loses a content change (issue 10 item 1).

A file rewritten with the same size and the same whole-second mtime (trees unpacked
from tarballs, ``touch -d``, ustar archives) must reach the layer: containerd's
continuity ``fs`` compares content when both mtimes have zero nanoseconds, and so
does lamina.  ``--checksum`` compares every file's content, whatever its mtime.
"""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
from pathlib import Path

from lamina.layer.changes import diff_trees, same_content
from lamina_testing import Lamina

T = 1_600_000_000  # a whole second, before the tests' SOURCE_DATE_EPOCH


def snapshot(root: Path, files: dict[str, bytes], mtime_ns: int = T * 10**9) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(mtime_ns, mtime_ns))
    return root


def unpacked(lamina: Lamina, ref: str, where: Path) -> Path:
    lamina.run("unpack", ref, where)
    return where


def test_same_size_same_whole_second_rewrite_reaches_the_layer(lamina: Lamina,
                                                               tmp_path: Path) -> None:
    one = snapshot(tmp_path / "one", {"etc/conf": b"old-bytes", "keep": b"same"})
    two = snapshot(tmp_path / "two", {"etc/conf": b"new-bytes", "keep": b"same"})
    res = lamina.run("import", "--json", "x", one, two).json()
    assert len(res["layers"]) == 2
    out = unpacked(lamina, "x", tmp_path / "out")
    assert (out / "etc/conf").read_bytes() == b"new-bytes"
    # The second layer holds the change and nothing that stayed the same.
    (blob,) = [lamina.root / "blobs/sha256" / res["layers"][1]["digest"][7:]]
    with tarfile.open(blob) as tar:
        members = {m.name: m for m in tar}
        assert sorted(members) == ["etc", "etc/conf"]
        got = tar.extractfile(members["etc/conf"])
        assert got is not None and got.read() == b"new-bytes"


def _ustar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), T, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_ustar_snapshots_keep_a_same_size_rewrite(lamina: Lamina, tmp_path: Path) -> None:
    (tmp_path / "v1.tar").write_bytes(_ustar({"app/version": b"1.0.0"}))
    (tmp_path / "v2.tar").write_bytes(_ustar({"app/version": b"1.0.1"}))
    lamina.run("import", "rel", tmp_path / "v1.tar", tmp_path / "v2.tar")
    out = unpacked(lamina, "rel", tmp_path / "out")
    assert (out / "app/version").read_bytes() == b"1.0.1"


def test_checksum_sees_a_rewrite_with_equal_nanosecond_mtimes(lamina: Lamina,
                                                              tmp_path: Path) -> None:
    ns = T * 10**9 + 123_456_789
    one = snapshot(tmp_path / "one", {"f": b"aaaa"}, ns)
    two = snapshot(tmp_path / "two", {"f": b"bbbb"}, ns)
    # The quick check trusts an mtime that has nanoseconds (as rsync and containerd do)...
    lamina.run("import", "quick", one, two)
    assert (unpacked(lamina, "quick", tmp_path / "q") / "f").read_bytes() == b"aaaa"
    # ...--checksum does not.
    lamina.run("import", "--checksum", "full", one, two)
    assert (unpacked(lamina, "full", tmp_path / "c") / "f").read_bytes() == b"bbbb"


def test_identical_whole_second_files_are_no_change(tmp_path: Path) -> None:
    files = {"a": b"x" * 5000, "d/b": b"y", "empty": b""}
    one = snapshot(tmp_path / "one", files)
    two = snapshot(tmp_path / "two", files)
    assert diff_trees(one, two).changes == []
    assert diff_trees(one, two, checksum=True).changes == []
    os.link(two / "a", tmp_path / "elsewhere")  # link counts must agree too
    assert [c.path for c in diff_trees(one, two)] == ["a"]


def test_content_is_compared_streaming_to_the_last_byte(tmp_path: Path) -> None:
    size = 8 << 20
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"\0" * size)
    b.write_bytes(b"\0" * (size - 1) + b"\1")
    tracemalloc.start()
    try:
        assert not same_content(str(a), str(b))
        assert same_content(str(a), str(a))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # two 1 MiB buffers, not the files
