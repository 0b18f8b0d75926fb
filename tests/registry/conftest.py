"""Fixtures for the registry tests: a docker-registry (plain, and htpasswd over TLS), the
in-process fake registry, and a store holding the seed pair demo/a and demo/b."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_servers import (
    PASSWORD,
    USER,
    DockerRegistry,
    FakeRegistry,
    make_cert,
    make_htpasswd,
)

from lamina_testing import Lamina, import_seed_images


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    reg = DockerRegistry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    root = tmp_path_factory.mktemp("tls-registry")
    cert, key = make_cert(root)
    reg = DockerRegistry(root / "r", htpasswd=make_htpasswd(root / "htpasswd", USER, PASSWORD),
                         tls=(cert, key)).start()
    yield reg
    reg.stop()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    reg = FakeRegistry().start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory, seed: Path) -> Path:
    root = tmp_path_factory.mktemp("seeded")
    import_seed_images(Lamina(root / "store", root), seed)
    return root / "store"


@pytest.fixture
def seeded(seeded_template: Path, tmp_path: Path) -> Lamina:
    """A store with demo/a and demo/b (3 shared layers, 1 each), fresh for each test."""
    shutil.copytree(seeded_template, tmp_path / "seeded")
    return Lamina(tmp_path / "seeded", tmp_path)


@pytest.fixture(autouse=True)
def _private_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real user's credentials."""
    monkeypatch.setenv("LAMINA_AUTH", str(tmp_path / "auth.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
