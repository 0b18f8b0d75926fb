"""Fixtures for the inspect tests: the known images, in a store and saved elsewhere."""

from __future__ import annotations

import pytest
from inspect_helpers import KnownImages, make_snapshots, write_opaque_layout

from lamina_testing import Lamina


@pytest.fixture(scope="session")
def known(tmp_path_factory: pytest.TempPathFactory) -> KnownImages:
    work = tmp_path_factory.mktemp("inspect")
    snaps = make_snapshots(work / "snapshots")
    lamina = Lamina(work / "store", snaps)
    lamina.run("import", "test/a", "base", "shared", "a3", "a4")
    lamina.run("import", "test/b", "base", "shared", "b3")
    oci = work / "layout"
    lamina.run("save", "--format", "oci", "-o", oci, "test/a", "test/b")
    archive = work / "ab.tar"
    lamina.run("save", "-o", archive, "test/a", "test/b")
    opaque = work / "opaque"
    write_opaque_layout(opaque)
    return KnownImages(lamina, oci, archive, opaque)
