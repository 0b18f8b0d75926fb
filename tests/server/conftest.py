"""Fixtures for the server tests: the registry app in-process over a fresh store (httpx's
ASGI transport), with and without auth; its blob storage is ``storage_cfg`` (the local
store here; test modules on S3 override it with ``s3_storage``, from s3_fixture.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from s3_fixture import ceph_cluster, s3_bucket, s3_gateway, s3_storage  # noqa: F401

from lamina.server import Registry, ServerConfig, create_app
from lamina.server.config import StorageConfig
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
def storage_cfg() -> StorageConfig:
    return StorageConfig()


@pytest.fixture
def make_client(store: Store, storage_cfg: StorageConfig) -> Any:
    """make_client(cfg=ServerConfig()) → (app, async client); closed at teardown."""
    made: list[tuple[Registry, httpx.AsyncClient]] = []

    def make(cfg: ServerConfig = ServerConfig(), **client_kw: Any
             ) -> tuple[Registry, httpx.AsyncClient]:
        if cfg.storage == StorageConfig():
            cfg = replace(cfg, storage=storage_cfg)
        app = create_app(store, cfg)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://registry.test", **client_kw)
        made.append((app, client))
        return app, client

    yield make
    for app, _ in made:
        app.state.close()
        app.blobstore.close()


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
