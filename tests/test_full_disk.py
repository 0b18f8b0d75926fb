"""A full disk mid-import: one clear line, non-zero exit, nothing half-written."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.store import Store
from lamina_testing import Lamina, seed_sources, small_tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs."""
    with small_tmpfs(tmp_path, "1m") as mnt:
        yield mnt


def test_import_onto_a_full_disk(small_fs: Path, seed: Path, tmp_path: Path) -> None:
    lamina = Lamina(small_fs / "store", tmp_path)
    # the busybox layer (~1.1 MB gzip'd) cannot fit in 1 MiB
    res = lamina.fail("import", "demo/a", *seed_sources(seed, "a"))
    assert res.code == 5, res.err
    assert res.err.startswith("lamina: no space left on device"), res.err
    assert len(res.err.strip().splitlines()) == 1
    assert lamina.blob_files() == set()
    assert not any((small_fs / "store" / "ingest").iterdir())
    assert lamina.run("images", "--json").json() == []
    # and the store still works for something that fits
    lamina.run("import", "small", seed / "site-a" / "etc")
    lamina.assert_consistent()


def _fill(fs: Path) -> Path:
    """Write a file until the file system is 100 % full."""
    fill = fs / "fill"
    with open(fill, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return fill


@pytest.fixture
def full_store(tmp_path: Path) -> Iterator[tuple[Lamina, Path]]:
    """A store holding one 300 kB image on a 2 MiB tmpfs filled to the last byte."""
    with small_tmpfs(tmp_path, "2m") as mnt:
        lamina = Lamina(mnt / "store", tmp_path)
        site = tmp_path / "site"
        (site / "etc").mkdir(parents=True)
        (site / "etc" / "big").write_bytes(os.urandom(300_000))
        lamina.run("import", "demo/a", site)
        assert (mnt / "store" / "reserve").stat().st_size > 0
        _fill(mnt)
        yield lamina, mnt


@pytest.mark.parametrize("command", ["df", "rmi", "gc", "images"])
def test_commands_that_free_or_show_space_work_on_a_full_disk(
        full_store: tuple[Lamina, Path], command: str) -> None:
    """#10.9: a full file system let no command open the store (-wal/-shm could not be
    made): the store's reserve is given up so that these work."""
    lamina, mnt = full_store
    blobs = lamina.blob_files()
    if command == "df":
        usage = lamina.run("df", "--json").json()
        assert {r["type"]: r["total"] for r in usage["summary"]}["Blobs"] == 3
    elif command == "images":
        assert [r["repository"] for r in lamina.run("images", "--json").json()] == ["demo/a"]
    elif command == "rmi":
        res = lamina.run("rmi", "--json", "demo/a").json()
        assert res["untagged"] and len(res["deleted"]) == 3
        assert lamina.blob_files() == set()
    else:
        res = lamina.run("gc", "--json").json()
        assert res["blobs_removed"] == []   # the image is tagged: nothing to take
        assert lamina.blob_files() == blobs
    # Once space is free again the store takes its reserve back.
    (mnt / "fill").unlink()
    assert lamina.run("images", "--json").code == 0
    assert (mnt / "store" / "reserve").stat().st_size > 0
    lamina.assert_consistent()


def test_rmi_on_a_full_disk_while_another_process_has_the_store_open(
        full_store: tuple[Lamina, Path]) -> None:
    """#10.9: with meta.db-wal kept by another connection (a ``lamina serve``), opening
    works on a full disk but a transaction did not: the reserve goes at open."""
    lamina, mnt = full_store
    (mnt / "fill").unlink()
    with Store(mnt / "store") as other:
        other.meta.tags()   # a reader: -wal and -shm exist while it lives
        _fill(mnt)
        assert (mnt / "store" / "meta.db-wal").exists()
        res = lamina.run("rmi", "--json", "demo/a").json()
        assert len(res["deleted"]) == 3 and lamina.blob_files() == set()
        assert other.meta.tags() == []
    (mnt / "fill").unlink()
    lamina.assert_consistent()


def test_full_disk_without_reserve_says_how_to_free_space(
        full_store: tuple[Lamina, Path], tmp_path: Path) -> None:
    """#10.9: with nothing held back, one line naming the cause and the way out, exit 5;
    gc first frees what needs no metadata (an abandoned ingest file) and then works."""
    lamina, mnt = full_store
    store = mnt / "store"
    (mnt / "fill").unlink()
    abandoned = store / "ingest" / "sha256-00000000deadbeef"
    abandoned.write_bytes(bytes(200_000))
    old = time.time() - 3600
    os.utime(abandoned, (old, old))
    (store / "reserve").unlink()
    _fill(mnt)
    (store / "reserve").unlink(missing_ok=True)   # taken back by nobody: disk was full
    for args in (["images"], ["rmi", "demo/a"], ["df"]):
        res = lamina.fail(*args)
        assert res.code == 5, res.err
        assert len(res.err.strip().splitlines()) == 1, res.err
        assert res.err.startswith("lamina: no space left on device: "), res.err
        assert res.err.strip().endswith("free space or run `lamina gc`"), res.err
    res = lamina.fail("gc", "--dry-run")
    assert res.code == 5 and abandoned.exists()
    assert res.err.strip().endswith("free space or run `lamina gc`"), res.err
    res = lamina.run("gc", "--json").json()
    assert res["blobs_removed"] == [] and not abandoned.exists()
    assert lamina.run("rmi", "demo/a").code == 0


def test_unpack_onto_a_full_disk(small_fs: Path, seed: Path, tmp_path: Path) -> None:
    # The store has room; the target (a 1 MiB tmpfs) cannot hold busybox (~1-2 MB).
    lamina = Lamina(tmp_path / "store", tmp_path)
    lamina.run("import", "demo/a", *seed_sources(seed, "a"))
    res = lamina.fail("unpack", "demo/a", small_fs / "root")
    assert res.code == 5, res.err                  # StoreError's, not 1
    assert res.err.startswith("lamina: no space left on device: cannot extract "), res.err
    assert len(res.err.strip().splitlines()) == 1
    assert list(small_fs.iterdir()) == []          # what it made is gone again


def test_gc_on_a_full_disk_with_nothing_to_free_does_not_send_the_user_back_to_gc(
        full_store: tuple[Lamina, Path]) -> None:
    """#10.9: no reserve, nothing gc could remove without the metadata: gc (and a prune,
    which opens the store as gc does) says one line that names the file system to free,
    not "run `lamina gc`", which has just failed."""
    lamina, mnt = full_store
    store = mnt / "store"
    (mnt / "fill").unlink()
    (store / "reserve").unlink()
    _fill(mnt)
    for args in (["gc"], ["image", "prune", "-f"]):
        res = lamina.fail(*args)
        assert res.code == 5, res.err
        assert len(res.err.strip().splitlines()) == 1, res.err
        assert res.err.startswith("lamina: no space left on device: "), res.err
        assert "lamina gc" not in res.err, res.err
        assert res.err.strip().endswith(
            f"gc found nothing to remove without it: free space on the file system "
            f"holding {store}"), res.err
    (mnt / "fill").unlink()
    assert lamina.run("gc").code == 0
