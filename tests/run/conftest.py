"""Fixtures for the run tests: one store per worker with the seed pair imported."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers

from lamina.run.rootfs import open_rootfs
from lamina.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import resolve_image
from lamina_testing import Lamina, import_seed_images, need, need_root


@pytest.fixture(scope="session")
def seeded(seed: Path, tmp_path_factory: pytest.TempPathFactory) -> Lamina:
    """A store holding demo/a and demo/b (the seed images), shared by a worker's tests:
    tests that commit use tags of their own."""
    need("bwrap")
    work = tmp_path_factory.mktemp("run-store")
    return import_seed_images(Lamina(work / "store", seed), seed)


@pytest.fixture
def fresh(seed: Path, tmp_path: Path) -> Lamina:
    """An empty store of the test's own (for counting snapshots and extractions)."""
    need("bwrap")
    return Lamina(tmp_path / "store", seed)


@pytest.fixture(scope="session")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static probe for the syscalls busybox cannot make (add_key, keyctl, a UDP
    server), compiled here."""
    gcc = need("gcc")
    out = tmp_path_factory.mktemp("probe")
    src = Path(__file__).parent / "data" / "sec_probe.c"
    subprocess.run([gcc, "-static", "-O1", "-o", str(out / "sec_probe"), str(src)], check=True)
    return out


@pytest.fixture
def lam(seeded: Lamina) -> Iterator[Lamina]:
    """The seeded store for container tests; every container left at the end is
    removed (killed first)."""
    yield seeded
    ids = seeded.run("ps", "-aq", "--no-trunc").out.split()
    if ids:
        seeded.run("rm", "-f", *ids)


@pytest.fixture
def walk_rootfs(seeded: Lamina) -> Iterator[Path]:
    """demo/a's root filesystem made by the walk snapshotter (root only); nothing left
    in the store afterwards."""
    need_root()
    with Store(seeded.root) as store:
        source = StoreTransport(store)
        image = resolve_image(source, source.resolve("demo/a"))
        with open_rootfs(store, source, image, "walk") as rootfs:
            yield rootfs.path
    assert_no_leftovers(seeded.root)
