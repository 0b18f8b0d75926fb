"""Fixtures for the server tests: the registry app in-process over a fresh store (httpx's
ASGI transport), with and without auth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamina.server import Registry, ServerConfig, create_app
from lamina.store import Store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def make_client(store: Store) -> Any:
    """make_client(cfg=ServerConfig()) → (app, async client); closed at teardown."""
    made: list[tuple[Registry, httpx.AsyncClient]] = []

    def make(cfg: ServerConfig = ServerConfig(), **client_kw: Any
             ) -> tuple[Registry, httpx.AsyncClient]:
        app = create_app(store, cfg)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://registry.test", **client_kw)
        made.append((app, client))
        return app, client

    yield make
    for app, _ in made:
        app.state.close()


@pytest.fixture
async def client(make_client: Callable[..., tuple[Registry, httpx.AsyncClient]]
                 ) -> AsyncIterator[httpx.AsyncClient]:
    _, c = make_client()
    async with c:
        yield c


@pytest.fixture
async def app(make_client: Callable[..., tuple[Registry, httpx.AsyncClient]]
              ) -> AsyncIterator[tuple[Registry, httpx.AsyncClient]]:
    a, c = make_client()
    async with c:
        yield a, c
