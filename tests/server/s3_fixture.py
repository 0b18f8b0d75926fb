"""The S3 the server tests use: one Ceph RADOS Gateway (tests/ceph_s3.py) per test run,
shared by the pytest-xdist workers.

The first worker to ask starts it under the run's shared temp directory, holding a file
lock; each worker adds its pid to ``users``, and the last to leave stops it.  A watchdog
process stops it too once every user has died (an interrupted or killed run).  Under
CI=true missing Ceph packages fail the run; elsewhere the tests skip.

``s3_gateway`` is that gateway; ``s3_bucket`` a fresh bucket for one test (emptied and
removed after it); ``s3_storage`` the ``StorageConfig`` for a ``lamina serve`` on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ceph_s3 import Ceph, Gateway, free_port, missing_tools, watchdog
from lamina.server.config import StorageConfig


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _users(root: Path) -> list[int]:
    try:
        return [int(x) for x in (root / "users").read_text().split()]
    except FileNotFoundError:
        return []


def _set_users(root: Path, pids: list[int]) -> None:
    (root / "users").write_text("".join(f"{p}\n" for p in pids))


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ceph, Gateway]]:
    missing = missing_tools()
    if missing:
        msg = (f"Ceph is not installed ({', '.join(missing)} missing; apt-get install "
               "ceph-mon ceph-osd radosgw ceph-common)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent          # shared by the workers of this run
    root = base / "ceph-s3"
    root.mkdir(exist_ok=True)
    ceph = Ceph(root)
    me = os.getpid()
    with _locked(base / "ceph-s3.lock"):
        if not ceph.running():
            ceph.stop()
            port = free_port()
            gw = ceph.start(port)
            (root / "endpoint").write_text(gw.endpoint)
            _set_users(root, [me])
            watchdog(root)
        else:
            gw = Gateway((root / "endpoint").read_text().strip())
            _set_users(root, [*_users(root), me])
    try:
        yield ceph, gw
    finally:
        with _locked(base / "ceph-s3.lock"):
            left = [p for p in _users(root) if p != me]
            _set_users(root, left)
            if not left:
                ceph.stop()


@pytest.fixture(scope="session")
def s3_gateway(ceph_cluster: tuple[Ceph, Gateway]) -> Gateway:
    return ceph_cluster[1]


def s3_client(gw: Gateway) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=gw.endpoint, region_name=gw.region,
                        aws_access_key_id=gw.access_key,
                        aws_secret_access_key=gw.secret_key,
                        config=Config(s3={"addressing_style": "path"}))


def empty_bucket(client: Any, bucket: str) -> None:
    with contextlib.suppress(Exception):
        for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"],
                                          UploadId=up["UploadId"])
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)


def bucket_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=prefix):
        keys += [str(o["Key"]) for o in page.get("Contents", [])]
    return sorted(keys)


@pytest.fixture
def s3_bucket(s3_gateway: Gateway) -> Iterator[str]:
    client = s3_client(s3_gateway)
    name = f"t-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield name
    empty_bucket(client, name)


@pytest.fixture
def s3_storage(s3_gateway: Gateway, s3_bucket: str) -> StorageConfig:
    return StorageConfig(driver="s3", endpoint=s3_gateway.endpoint, region=s3_gateway.region,
                         bucket=s3_bucket, access_key=s3_gateway.access_key,
                         secret_key=s3_gateway.secret_key)


def storage_toml(cfg: StorageConfig, **extra: Any) -> str:
    """The ``[storage]`` section of a serve.toml for ``cfg`` (credentials left to the
    AWS environment variables when ``env`` is true)."""
    lines = ["[storage]", 'driver = "s3"', f'bucket = "{cfg.bucket}"']
    if not extra.pop("env", False):
        lines += [f'endpoint = "{cfg.endpoint}"', f'region = "{cfg.region}"',
                  f'access_key = "{cfg.access_key}"', f'secret_key = "{cfg.secret_key}"']
    for k, v in extra.items():
        lines.append(f"{k} = {json.dumps(v)}")     # JSON's true/1/"x" are TOML's too
    return "\n".join(lines) + "\n"
