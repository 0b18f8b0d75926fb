"""Fixtures for the server tests: the registry app in-process over a fresh store (httpx's
ASGI transport), with and without auth; its blob storage is ``storage_cfg`` (the local
store here; test modules on S3 override it with ``s3_storage``, from s3_fixture.py).

A test module that sets ``REPLICA_PAIR = True`` runs each test that takes ``client`` twice:
against one app on the store's SQLite metadata ("local"), and against two apps — two
replicas over one blob storage (``storage_cfg``: one directory, or the S3 bucket) and one
PostgreSQL database (pg_fixture.py) — with requests alternating between them
("replicas")."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_fixture import pg_server, pg_url  # noqa: F401 - fixtures
from s3_fixture import ceph_cluster, s3_bucket, s3_gateway, s3_storage  # noqa: F401

from lamina.server import Registry, ServerConfig, create_app
from lamina.server.config import MetadataConfig, StorageConfig
from lamina.store import Store


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "client" in metafunc.fixturenames and getattr(metafunc.module, "REPLICA_PAIR", False):
        metafunc.parametrize("client", ["local", "replicas"], indirect=True)


class Alternating(httpx.AsyncBaseTransport):
    """Each request to the next app in turn: a load balancer at its most unhelpful."""

    def __init__(self, apps: list[Registry]) -> None:
        self.transports = [httpx.ASGITransport(app=a) for a in apps]
        self.turn = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.transports[self.turn % len(self.transports)]
        self.turn += 1
        return await transport.handle_async_request(request)


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
def make_replicas(tmp_path: Path, request: pytest.FixtureRequest,
                  storage_cfg: StorageConfig) -> Any:
    """make_replicas(n=2, cfg=ServerConfig()) → (apps, alternating client): ``n`` apps,
    each on a Store of its own over one root and ``storage_cfg``, sharing a fresh
    PostgreSQL database."""
    made: list[tuple[list[Registry], list[Store]]] = []

    def make(n: int = 2, cfg: ServerConfig = ServerConfig(), **client_kw: Any
             ) -> tuple[list[Registry], httpx.AsyncClient]:
        url = request.getfixturevalue("pg_url")
        cfg = replace(cfg, metadata=MetadataConfig(url=url, pool_size=4, pool_wait=0.5))
        if cfg.storage == StorageConfig():
            cfg = replace(cfg, storage=storage_cfg)
        stores = [Store(tmp_path / "shared-store") for _ in range(n)]
        apps = [create_app(s, cfg) for s in stores]
        made.append((apps, stores))
        client = httpx.AsyncClient(transport=Alternating(apps), base_url="http://registry.test",
                                   **client_kw)
        return apps, client

    yield make
    for apps, stores in made:
        for a in apps:
            a.state.close()
            a.blobstore.close()
        for s in stores:
            s.close()


@pytest.fixture
async def client(make_client: Callable[..., tuple[Registry, httpx.AsyncClient]],
                 request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    if getattr(request, "param", "local") == "replicas":
        _, c = request.getfixturevalue("make_replicas")()
    else:
        _, c = make_client()
    async with c:
        yield c


@pytest.fixture
async def app(make_client: Callable[..., tuple[Registry, httpx.AsyncClient]]
              ) -> AsyncIterator[tuple[Registry, httpx.AsyncClient]]:
    a, c = make_client()
    async with c:
        yield a, c
