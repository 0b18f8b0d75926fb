"""A full disk mid-import: one clear line, non-zero exit, nothing half-written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_unpack_onto_a_full_disk(small_fs: Path, seed: Path, tmp_path: Path) -> None:
    # The store has room; the target (a 1 MiB tmpfs) cannot hold busybox (~1-2 MB).
    lamina = Lamina(tmp_path / "store", tmp_path)
    lamina.run("import", "demo/a", *seed_sources(seed, "a"))
    res = lamina.fail("unpack", "demo/a", small_fs / "root")
    assert res.code == 5, res.err                  # StoreError's, not 1
    assert res.err.startswith("lamina: no space left on device: cannot extract "), res.err
    assert len(res.err.strip().splitlines()) == 1
    assert list(small_fs.iterdir()) == []          # what it made is gone again
