"""Shared fixtures: the real lamina CLI in a fresh store, the seed snapshots."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina_testing import REPO, Lamina, need


@pytest.fixture
def lamina(tmp_path: Path) -> Lamina:
    return Lamina(tmp_path / "store", tmp_path)


@pytest.fixture
def make_lamina(tmp_path: Path) -> Iterator[Any]:
    def make(name: str) -> Lamina:
        return Lamina(tmp_path / name, tmp_path)
    yield make


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed story's snapshots: os, webserver, config, site-a, site-b."""
    need("busybox")
    out = tmp_path_factory.mktemp("seed") / "snapshots"
    subprocess.run([str(REPO / "examples" / "seed" / "make-snapshots.sh"), str(out)],
                   check=True)
    return out


