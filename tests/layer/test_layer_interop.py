"""Interop with GNU tar, both ways, and a real unprivileged apply."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from layer_helpers import IS_ROOT, apply_bytes, layer_bytes, snapshot

from lamina.layer import LayerOptions, diff_trees, iter_tar_entries

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")

LONG_DIR = "l" * 120
LONG_FILE = "f" * 150
LONG_TARGET = "/" + "t" * 200


def fixture_tree(root: Path) -> Path:
    root.mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-hard")
    os.symlink("tool", root / "bin" / "tool-soft")
    os.symlink(LONG_TARGET, root / "long-soft")
    (root / LONG_DIR / LONG_DIR).mkdir(parents=True)
    (root / LONG_DIR / LONG_DIR / LONG_FILE).write_bytes(b"deep and long\n" * 100)
    os.link(root / LONG_DIR / LONG_DIR / LONG_FILE, root / "short-hard")
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "empty").write_bytes(b"")
    (root / "utf8-é").write_text("é")
    os.mkfifo(root / "pipe")
    os.setxattr(root / "bin" / "tool", "user.origin", b"lamina")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(
                os.path.join(dirpath, name), (1_234_567_890, 1_234_567_890), follow_symlinks=False
            )
    return root


def test_gnu_tar_lists_lamina_layers(tmp_path: Path) -> None:
    src = fixture_tree(tmp_path / "src")
    data, _ = layer_bytes(diff_trees(None, src), LayerOptions(compression="gzip"))
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(data)
    out = subprocess.run(
        ["tar", "--numeric-owner", "--full-time", "-tvzf", str(layer)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"},
    ).stdout.splitlines()
    lines = {line.split(" 2009-02-13 23:31:30 ", 1)[1]: line for line in out}
    assert lines["bin/tool"].startswith("-rwsr-xr-x 0/0")
    assert lines["bin/tool-hard link to bin/tool"].startswith("hrwsr-xr-x")
    assert lines["bin/tool-soft -> tool"].startswith("lrwxrwxrwx")
    assert lines[f"long-soft -> {LONG_TARGET}"].startswith("l")
    assert lines[f"{LONG_DIR}/{LONG_DIR}/{LONG_FILE}"].startswith("-rw-r--r-- 0/0            1400")
    assert lines[f"short-hard link to {LONG_DIR}/{LONG_DIR}/{LONG_FILE}"].startswith("h")
    assert lines["sticky/"].startswith("drwxrwxrwt")
    assert lines["pipe"].startswith("prw-r--r--")
    assert "utf8-é" in lines
    assert len(out) == 13
    # And GNU tar extracts it to the same tree.
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-xzpf", str(layer), "-C", str(dest)],
        check=True,
    )
    assert snapshot(dest) == snapshot(src)


@pytest.mark.parametrize("fmt", ["pax", "gnu", "ustar-ish"])
def test_lamina_applies_tars_made_by_gnu_tar(tmp_path: Path, fmt: str) -> None:
    src = fixture_tree(tmp_path / "src")
    if fmt == "ustar-ish":
        # ustar cannot hold the long names: drop them, keep the rest.
        shutil.rmtree(src / LONG_DIR)
        os.unlink(src / "long-soft")
        os.unlink(src / "short-hard")
        os.utime(src, (1_234_567_890, 1_234_567_890))
    tar_fmt = "ustar" if fmt == "ustar-ish" else fmt
    archive = tmp_path / "gnu.tar"
    subprocess.run(
        [
            "tar",
            f"--format={tar_fmt}",
            *(["--xattrs"] if fmt == "pax" else []),
            "--numeric-owner",
            "-cf",
            str(archive),
            "-C",
            str(src),
            ".",
        ],
        check=True,
    )
    raw = archive.read_bytes()
    if fmt == "gnu":
        names = [e.name for e in iter_tar_entries(io.BytesIO(raw))]
        assert f"./{LONG_DIR}/{LONG_DIR}/{LONG_FILE}" in names  # via a GNU 'L' record
    dest = tmp_path / "dest"
    result = apply_bytes(raw, dest)
    assert result.uncompressed_size == len(raw)  # GNU's record padding is hashed too
    expected = snapshot(src)
    got = snapshot(dest)
    if fmt != "pax":  # only PAX carries xattrs
        for rel, entry in expected.items():
            if entry[0] == "f":
                expected[rel] = entry[:5] + ({},)
    assert got == expected
    assert os.stat(dest / "bin" / "tool").st_ino == os.stat(dest / "bin" / "tool-hard").st_ino


def test_gnu_tar_base256_numbers_are_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.utime(src / "f", (2**33 + 5, 2**33 + 5))  # beyond 11 octal digits: base-256
    archive = tmp_path / "big.tar"
    subprocess.run(["tar", "--format=gnu", "-cf", str(archive), "-C", str(src), "f"], check=True)
    raw = archive.read_bytes()
    assert raw[136] & 0x80  # really base-256
    entries = list(iter_tar_entries(io.BytesIO(raw)))
    assert entries[0].mtime == 2**33 + 5


def test_lamina_mtime_beyond_octal_uses_pax_and_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "future").write_text("x")
    t = 2**33 + 7  # past 11 octal digits, within what ext4 can store
    os.utime(src / "future", (t, t))
    data, _ = layer_bytes(diff_trees(None, src), LayerOptions(compression="none"))
    assert b" mtime=%d\n" % t in data
    apply_bytes(data, tmp_path / "out")
    assert os.stat(tmp_path / "out" / "future").st_mtime == t


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root + setpriv")
def test_apply_as_an_unprivileged_user(tmp_path: Path) -> None:
    # pytest's tmp_path is private to root; nobody needs a directory of its own.
    work = Path(tempfile.mkdtemp(prefix="lamina-nobody-", dir="/var/tmp"))
    try:
        _apply_as_nobody(tmp_path, work)
    finally:
        shutil.rmtree(work)


def _apply_as_nobody(tmp_path: Path, work: Path) -> None:
    """Default ApplyOptions for a non-root user: no chown, no device nodes, no error."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "owned").write_text("x")
    os.chown(src / "owned", 1234, 1234)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(src / "fifo")
    (src / "ro").mkdir()
    (src / "ro" / "inside").write_text("y")
    os.chmod(src / "ro", 0o555)
    data, info = layer_bytes(diff_trees(None, src))
    os.chown(work, 65534, 65534)
    (work / "layer.tgz").write_bytes(data)
    script = (
        "import sys, pathlib;"
        "from lamina.layer import apply_layer;"
        "from lamina.digest import Digest;"
        "r = apply_layer(open(sys.argv[1], 'rb'), pathlib.Path(sys.argv[2]),"
        " Digest.parse(sys.argv[3]));"
        "print(r.entries)"
    )
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
            str(work / "layer.tgz"),
            str(work / "out"),
            str(info.diff_id),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = work / "out"
    assert int(proc.stdout) == info.entries
    assert os.stat(out / "owned").st_uid == 65534
    assert not (out / "null").exists()
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert (out / "ro" / "inside").read_text() == "y"
    assert os.stat(out / "ro").st_mode & 0o777 == 0o555
