"""``lamina serve`` with its blobs in S3 (a real Ceph RADOS Gateway, s3_fixture.py): the
distribution-spec workflows of test_server_push_pull.py run again on that storage — on
one app, and on a replica pair over one bucket and one PostgreSQL database with requests
alternating between them — and
what only S3 has — objects named by digest, verified before they appear, multipart
uploads continued by another process, Range reads passed through, redirects."""

from __future__ import annotations

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

from lamina.server.config import StorageConfig

pytestmark = pytest.mark.anyio
REPLICA_PAIR = True      # conftest: each test also runs on two replicas (S3 + PostgreSQL)


@pytest.fixture
def storage_cfg(s3_storage: StorageConfig) -> StorageConfig:
    return s3_storage


async def test_blobs_are_objects_named_by_digest(client: httpx.AsyncClient,
                                                 s3_storage: StorageConfig,
                                                 s3_gateway: object) -> None:
    blob = random_bytes(7000, 11)
    await push_blob(client, "s3/named", blob)
    hexd = digest_of(blob).split(":")[1]
    keys = bucket_keys(s3_client(s3_gateway), s3_storage.bucket)  # type: ignore[arg-type]
    assert keys == [f"blobs/sha256/{hexd[:2]}/{hexd}"]
    obj = s3_client(s3_gateway).get_object(Bucket=s3_storage.bucket, Key=keys[0])  # type: ignore[arg-type]
    assert obj["Body"].read() == blob
