"""``lamina serve`` with its blobs in S3 (a real Ceph RADOS Gateway, s3_fixture.py): the
distribution-spec workflows of test_server_push_pull.py run again on that storage — on
one app, and on a replica pair over one bucket and one PostgreSQL database with requests
alternating between them — and
what only S3 has — objects named by digest, verified before they appear, multipart
uploads continued by another process, Range reads passed through, redirects."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import httpx
import pytest
from s3_fixture import bucket_keys, s3_client
from server_helpers import digest_of, push_blob, random_bytes
from test_server_push_pull import (  # noqa: F401 - collected here again, on S3
    test_cancel_and_bad_digest,
    test_chunked_upload,
    test_docker_types_and_indexes,
    test_last_chunk_with_put_and_streamed_patch,
    test_manifest_refusals,
    test_manifests,
    test_monolithic_uploads,
    test_mounts,
    test_ranges,
)

from ceph_s3 import Gateway
from lamina.server import ServerConfig
from lamina.server.config import Limits, StorageConfig
from lamina.server.storage import s3

pytestmark = pytest.mark.anyio
REPLICA_PAIR = True      # conftest: the workflows also run on two replicas (Ceph + PostgreSQL)


@pytest.fixture
def storage_cfg(s3_storage: StorageConfig) -> StorageConfig:
    return s3_storage


async def test_blobs_are_objects_named_by_digest(client: httpx.AsyncClient,
                                                 s3_storage: StorageConfig,
                                                 s3_gateway: Gateway) -> None:
    blob = random_bytes(7000, 11)
    await push_blob(client, "s3/named", blob)
    hexd = digest_of(blob).split(":")[1]
    keys = bucket_keys(s3_client(s3_gateway), s3_storage.bucket)
    assert keys == [f"blobs/sha256/{hexd[:2]}/{hexd}"]
    obj = s3_client(s3_gateway).get_object(Bucket=s3_storage.bucket, Key=keys[0])
    assert obj["Body"].read() == blob


async def test_copy_past_the_single_copy_limit(client: httpx.AsyncClient,
                                               s3_storage: StorageConfig,
                                               s3_gateway: Gateway,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob over S3's 5 GiB CopyObject limit is committed by UploadPartCopy ranges:
    here with the limit lowered to 6 MiB, so a 13 MiB blob takes that path."""
    monkeypatch.setattr(s3, "MAX_COPY", 6 * 1024 * 1024)
    monkeypatch.setattr(s3, "COPY_PART", 5 * 1024 * 1024)
    blob = random_bytes(13 * 1024 * 1024 + 7, 12)
    r = await client.post("/v2/s3/big/blobs/uploads/")
    r = await client.patch(r.headers["location"], content=blob)
    assert r.status_code == 202
    r = await client.put(r.headers["location"], params={"digest": digest_of(blob)})
    assert r.status_code == 201, r.text
    r = await client.get(f"/v2/s3/big/blobs/{digest_of(blob)}")
    assert r.status_code == 200 and r.content == blob
    hexd = digest_of(blob).split(":")[1]
    head = s3_client(s3_gateway).head_object(Bucket=s3_storage.bucket,
                                             Key=f"blobs/sha256/{hexd[:2]}/{hexd}")
    assert head["ContentLength"] == len(blob)
    assert head["ETag"].endswith('-3"')         # three copied parts: 5 + 5 + 3 MiB


async def test_key_prefix(make_client: Any, s3_storage: StorageConfig,
                          s3_gateway: Gateway) -> None:
    cfg = ServerConfig(storage=dataclasses.replace(s3_storage, prefix="reg/one/"))
    _, c = make_client(cfg)
    async with c:
        blob = random_bytes(100, 13)
        await push_blob(c, "s3/prefixed", blob)
        assert (await c.get(f"/v2/s3/prefixed/blobs/{digest_of(blob)}")).content == blob
    hexd = digest_of(blob).split(":")[1]
    assert bucket_keys(s3_client(s3_gateway), s3_storage.bucket) == [
        f"reg/one/blobs/sha256/{hexd[:2]}/{hexd}"]


async def test_expired_sessions_leave_nothing_in_the_bucket(make_client: Any,
                                                            s3_storage: StorageConfig,
                                                            s3_gateway: Gateway) -> None:
    """An upload left behind — one part sent, a tail short of the next — expires: its
    multipart upload is aborted and its tail objects removed, by the process that held
    it or (here: it forgot them, as after a restart) from the rows alone."""
    cfg = ServerConfig(limits=Limits(upload_ttl=1.0),
                       storage=dataclasses.replace(s3_storage, part_size=5 * 1024 * 1024))
    app, c = make_client(cfg)
    client = s3_client(s3_gateway)
    async with c:
        for seed in (1, 2):
            r = await c.post("/v2/s3/left/blobs/uploads/")
            r = await c.patch(r.headers["location"],
                              content=random_bytes(5 * 1024 * 1024 + 1000, seed))
            assert r.status_code == 202
        assert len(client.list_multipart_uploads(Bucket=s3_storage.bucket)["Uploads"]) == 2
        assert len(bucket_keys(client, s3_storage.bucket, "_uploads/")) == 2   # the tails
        app.uploads.forget()
        await anyio.sleep(1.2)
        assert await app.uploads.expire() == 2
    assert bucket_keys(client, s3_storage.bucket) == []
    assert client.list_multipart_uploads(Bucket=s3_storage.bucket).get("Uploads", []) == []
