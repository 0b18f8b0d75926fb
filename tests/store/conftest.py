"""Fixtures for the store room: a fresh Store on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store") as s:
        yield s
