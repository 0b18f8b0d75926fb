"""Fixtures for the layer tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina.store.rmtree import remove_tree


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A target dir and a sentinel dir beside it that no layer may touch.  The target
    is removed afterwards without recursion: pytest's own cleanup (shutil.rmtree)
    fails on the trees ~2000 levels deep that some tests make."""
    target = tmp_path / "target"
    sentinel = tmp_path / "sentinel"
    target.mkdir()
    sentinel.mkdir()
    (sentinel / "secret").write_text("keep me")
    yield target, sentinel
    remove_tree(target)


@pytest.fixture
def build() -> Callable[[Path, dict[str, object]], Path]:
    """Make a tree from {path: content | None (dir) | ('->', target)}."""

    def _build(root: Path, spec: dict[str, object]) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        for rel, what in sorted(spec.items()):
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if what is None:
                p.mkdir(exist_ok=True)
            elif isinstance(what, tuple):
                os.symlink(what[1], p)
            else:
                assert isinstance(what, bytes | str)
                p.write_bytes(what.encode() if isinstance(what, str) else what)
        return root

    return _build
