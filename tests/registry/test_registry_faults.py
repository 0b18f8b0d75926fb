"""Bad answers from a registry, served by the in-process fake: each gives one clear error
naming the registry and the object, and leaves the store as it was (fsck clean, no
ingest files); transient ones (429, 500, a connection cut mid-blob) are ridden out."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from registry_servers import FakeRegistry, Fault, free_port, pull_image, push_image, sha256

from lamina.digest import Digest
from lamina.errors import (
    IntegrityError,
    InvalidManifest,
    LaminaError,
    NotFound,
    TransportError,
    Unsupported,
)
from lamina.image.manifest import Manifest
from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.copy import CopyOptions
from lamina.transport.registry import RegistryError, RegistryOptions, RegistrySource
from lamina_testing import Lamina, small_tmpfs, tar_bytes

FAST = RegistryOptions(backoff=0.01, max_backoff=0.05, retries=3)
# Real (plain) tars: fsck checks that every image layer can be unpacked (#10.5).
BIG = tar_bytes([("big", os.urandom(3 * 1024 * 1024 + 17))])
SMALL = tar_bytes([("small", b"a small layer")])


@pytest.fixture
def image(fake: FakeRegistry) -> Reference:
    fake.add_image("app", "v1", [BIG, SMALL])
    return Reference.parse(f"{fake.host}/app:v1")


def pull(lam: Lamina, ref: Reference, opts: RegistryOptions = FAST, jobs: int = 1) -> None:
    with Store(lam.root) as store:
        pull_image(store, ref, opts, CopyOptions(jobs=jobs))


def fails_cleanly(lam: Lamina, ref: Reference, kind: type[LaminaError],
                  opts: RegistryOptions = FAST, jobs: int = 1) -> str:
    """The pull raises ``kind`` with a one-line message, and the store is unchanged."""
    Store(lam.root).close()
    before = lam.blob_files()
    with pytest.raises(kind) as info:
        pull(lam, ref, opts, jobs)
    message = str(info.value)
    assert "\n" not in message
    assert lam.blob_files() == before
    lam.assert_consistent()
    with Store(lam.root) as store:
        assert store.meta.get_tag(str(ref)) is None
    return message


def store_manifest(store: Store, name: str) -> Manifest:
    from lamina.image.manifest import parse
    from lamina.transport.local import StoreTransport

    desc = StoreTransport(store).resolve(name)
    doc = parse(store.blobs.read_bytes(desc.digest), desc.media_type)
    assert isinstance(doc, Manifest)
    return doc


def blob_gets(fake: FakeRegistry, data: bytes) -> list[dict[str, str]]:
    return [h for _, _, h in fake.requests("GET", f"/blobs/{sha256(data)}")]


def test_resume_with_range_after_a_cut(fake: FakeRegistry, image: Reference,
                                       lamina: Lamina) -> None:
    cut = 1024 * 1024 + 12345
    fake.cuts[sha256(BIG)] = (cut, 1)
    pull(lamina, image)
    gets = blob_gets(fake, BIG)
    assert len(gets) == 2
    assert "Range" not in gets[0] and gets[1]["Range"] == f"bytes={cut}-"
    lamina.assert_consistent()
    with Store(lamina.root) as store:
        assert store.blobs.read_bytes(Digest.from_bytes(BIG)) == BIG


def test_restart_when_the_registry_ignores_range(fake: FakeRegistry, image: Reference,
                                                 lamina: Lamina) -> None:
    fake.ranges = False
    fake.cuts[sha256(BIG)] = (2 * 1024 * 1024, 1)
    pull(lamina, image)
    assert len(blob_gets(fake, BIG)) == 2
    lamina.assert_consistent()


def test_registry_closing_mid_blob_beyond_retries(fake: FakeRegistry, image: Reference,
                                                  lamina: Lamina) -> None:
    fake.cuts[sha256(BIG)] = (1000, None)      # every answer stops at byte 1000
    message = fails_cleanly(lamina, image, TransportError, jobs=2)
    assert message.startswith(f"{fake.host}: blob {sha256(BIG)} of app: connection lost "
                              f"after 1000 of {len(BIG)} bytes"), message
    assert len(blob_gets(fake, BIG)) == 1 + FAST.retries


def test_blob_whose_bytes_do_not_match(fake: FakeRegistry, image: Reference,
                                       lamina: Lamina) -> None:
    fake.corrupt.add(sha256(SMALL))
    message = fails_cleanly(lamina, image, IntegrityError, jobs=3)
    assert fake.host in message and sha256(SMALL) in message


def test_manifest_over_4_mib(fake: FakeRegistry, lamina: Lamina) -> None:
    raw = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    fake.put_manifest("huge", "v1", "application/vnd.oci.image.manifest.v1+json", raw)
    message = fails_cleanly(lamina, Reference.parse(f"{fake.host}/huge:v1"), InvalidManifest)
    assert message == (f"{fake.host}: manifest huge:v1 is {len(raw)} bytes, over the 4 MiB "
                       "limit")


def test_401_without_credentials(fake: FakeRegistry, image: Reference, lamina: Lamina) -> None:
    fake.auth = "basic"
    message = fails_cleanly(lamina, image, RegistryError)
    assert message == (f"{fake.host}: manifest app:v1 requires authentication: "
                       f"run lamina login {fake.host}")


def test_connection_refused(lamina: Lamina) -> None:
    host = f"127.0.0.1:{free_port()}"
    message = fails_cleanly(lamina, Reference.parse(f"{host}/app:v1"), TransportError)
    assert message == f"cannot connect to {host}: connection refused"


def test_unknown_media_type(fake: FakeRegistry, lamina: Lamina) -> None:
    fake.put_manifest("odd", "v1", "application/vnd.example.thing+json", b'{"hello": 1}')
    message = fails_cleanly(lamina, Reference.parse(f"{fake.host}/odd:v1"), Unsupported)
    assert message == (f"{fake.host}: manifest odd:v1 has unsupported media type "
                       "application/vnd.example.thing+json")


def test_missing_tag_is_not_found_with_the_registry_code(fake: FakeRegistry,
                                                         lamina: Lamina) -> None:
    message = fails_cleanly(lamina, Reference.parse(f"{fake.host}/app:nope"), NotFound)
    assert message == (f"{fake.host}: manifest app:nope not found (MANIFEST_UNKNOWN: "
                       "manifest unknown)")


def test_429_with_retry_after_then_success(fake: FakeRegistry, image: Reference,
                                           lamina: Lamina) -> None:
    fake.faults.append(Fault("GET", "/manifests/v1", 429, {"Retry-After": "1"}))
    start = time.monotonic()
    pull(lamina, image)
    assert time.monotonic() - start >= 0.95
    assert len(fake.requests("GET", "/manifests/v1")) == 2
    lamina.assert_consistent()


def test_500_then_success(fake: FakeRegistry, image: Reference, lamina: Lamina) -> None:
    fake.faults.append(Fault("GET", f"/blobs/{sha256(SMALL)}", 500, times=2))
    pull(lamina, image)
    assert len(blob_gets(fake, SMALL)) == 3
    lamina.assert_consistent()


def test_500_beyond_retries(fake: FakeRegistry, image: Reference, lamina: Lamina) -> None:
    fake.faults.append(Fault("GET", f"/blobs/{sha256(SMALL)}", 503, times=None,
                             body=b'{"errors":[{"code":"UNAVAILABLE","message":"busy"}]}'))
    message = fails_cleanly(lamina, image, RegistryError)
    assert message == (f"{fake.host}: blob {sha256(SMALL)} of app: server error (HTTP 503) "
                       "(UNAVAILABLE: busy)")
    assert len(blob_gets(fake, SMALL)) == 1 + FAST.retries


def test_docker_content_digest_must_match(fake: FakeRegistry, image: Reference,
                                          lamina: Lamina) -> None:
    raw = fake.manifests["app:v1"][1]
    fake.faults.append(Fault("GET", "/manifests/v1", 200, times=None, body=raw, headers={
        "Content-Type": "application/vnd.oci.image.manifest.v1+json",
        "Docker-Content-Digest": sha256(b"something else")}))
    message = fails_cleanly(lamina, image, IntegrityError)
    assert "Docker-Content-Digest" in message and fake.host in message


# -- pushing to the fake: retries, chunk sizes, locations ------------------------------------
def test_push_rides_out_500_and_honours_chunk_min_length(fake: FakeRegistry, seeded: Lamina,
                                                         tmp_path: Path) -> None:
    fake.chunk_min = 512 * 1024
    fake.faults.append(Fault("POST", "/blobs/uploads/", 500))
    dest = Reference.parse(f"{fake.host}/pushed:v1")
    with Store(seeded.root) as store:
        top = push_image(store, "demo/a", dest, RegistryOptions(
            backoff=0.01, chunk_size=64 * 1024))
    patches = fake.requests("PATCH")
    # every PATCH is at least the minimum; each blob's last piece goes with its PUT
    assert patches and all(int(h["Content-Length"]) >= 512 * 1024 for _, _, h in patches)
    assert fake.manifests["pushed:v1"][1] == fake.manifests[f"pushed@{top.digest}"][1]
    other = Lamina(tmp_path / "other", tmp_path)
    pull(other, dest)
    other.assert_consistent()


def test_push_of_a_rotten_store_blob_is_refused_by_the_registry(
        fake: FakeRegistry, seeded: Lamina) -> None:
    """A store blob is pushed by sendfile without hashing it again: the registry's check
    of ``?digest=`` is what catches bytes that rotted on disk (same size, other bytes),
    and the CLI says so in one line with a non-zero exit."""
    with Store(seeded.root) as store:
        manifest = store_manifest(store, "demo/a")
        layer = manifest.layers[-1]
        path = store.blobs.path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    res = seeded.run("push", "demo/a", f"{fake.host}/rotten:v1", check=False)
    assert res.code == 6, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "DIGEST_INVALID" in lines[0] and str(layer.digest) in lines[0]
    assert "rotten:v1" not in fake.manifests
    assert (("rotten", str(layer.digest)) not in fake.links)


def test_pull_onto_a_full_disk(fake: FakeRegistry, image: Reference, tmp_path: Path) -> None:
    """A store on a 2 MiB tmpfs, a 3 MiB layer: one line naming the problem, exit 5
    (StoreError), and no blob, ingest file or image left behind."""
    with small_tmpfs(tmp_path, "2m") as mnt:
        lam = Lamina(mnt / "store", tmp_path)
        res = lam.run("pull", str(image), check=False)
        # Where the space runs out (the layer, an ingest file, SQLite's WAL) depends on
        # timing; the answer is the same kind either way.
        lines = res.err.strip().splitlines()
        assert res.code == 5 and len(lines) == 1, res
        # (the layer or an ingest file: "... while writing X"; the metadata: "...: cannot
        # write store metadata")
        assert lines[0].startswith("lamina: no space left on device"), res
        assert "while writing " in lines[0] or "store metadata" in lines[0], res
        assert sha256(BIG).split(":", 1)[1] not in lam.blob_files()
        assert not list((mnt / "store" / "ingest").iterdir())
        lam.assert_consistent()
        assert "app" not in lam.run("images").out


def test_push_over_tls_sends_a_retried_blob_from_its_start(seeded: Lamina,
                                                          tmp_path: Path) -> None:
    """A store blob goes out by sendfile; over TLS that is read+send, and a PUT retried
    after a 503 must send the file from its first byte again, not from where the last
    attempt left it."""
    import ssl

    from registry_servers import make_cert

    cert, key = make_cert(tmp_path)
    fake = FakeRegistry()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    fake.server.socket = ctx.wrap_socket(fake.server.socket, server_side=True)
    fake.start()
    try:
        fake.faults.append(Fault("PUT", "/blobs/uploads/", 503, times=2))
        with Store(seeded.root) as store:
            push_image(store, "demo/a", f"{fake.host}/pushed:v1",
                       RegistryOptions(backoff=0.01, ca_bundle=cert))
            manifest = store_manifest(store, "demo/a")
            for blob in manifest.blobs():
                assert fake.blobs[str(blob.digest)] == store.blobs.read_bytes(blob.digest)
        assert "pushed:v1" in fake.manifests
        assert len(fake.requests("PUT", "/blobs/uploads/")) == len(manifest.blobs()) + 2
    finally:
        fake.stop()


def test_a_layer_listed_twice_is_copied_once(fake: FakeRegistry, lamina: Lamina) -> None:
    """One blob, two places in a manifest (it happens: an empty layer twice): fetched
    once, written once, counted once — one worker or several."""
    import json

    from lamina.transport.copy import CopyEvent

    manifest = json.loads(fake.add_image("dup", "v1", [BIG, SMALL, BIG]))
    every = sorted({sha256(BIG), sha256(SMALL), manifest["config"]["digest"]})
    for jobs in (1, 3):
        events: list[CopyEvent] = []
        with Store(lamina.root.with_name(f"dup-{jobs}")) as store:
            pull_image(store, Reference.parse(f"{fake.host}/dup:v1"),
                       dataclasses.replace(FAST, jobs=jobs), CopyOptions(on_event=events.append))
        seen = sorted((str(e.descriptor.digest), e.kind) for e in events
                      if e.kind != "progress")
        assert seen == sorted((d, k) for d in every for k in ("start", "done")), seen
    assert len(blob_gets(fake, BIG)) == 2   # once per pull


def test_source_resolves_tags_digests_and_lists(fake: FakeRegistry, image: Reference) -> None:
    src = RegistrySource(image, FAST)
    desc = src.resolve(None)
    assert src.resolve(str(desc.digest)) == desc
    assert src.resolve(f"{fake.host}/app@{desc.digest}") == desc
    assert src.resolve("v1") == desc
    src.close()


def test_resume_through_a_callers_own_client(fake: FakeRegistry, image: Reference,
                                             lamina: Lamina) -> None:
    """The client seam: a caller's own ``HttpClient`` (with one pooled connection) is
    the one used, and resumes a cut blob the same way."""
    from lamina.transport.registry.wire import HttpClient

    cut = 2 * 1024 * 1024 + 1
    fake.cuts[sha256(BIG)] = (cut, 1)
    with Store(lamina.root) as store, HttpClient(pool_size=1) as client:
        pull_image(store, image, FAST, client=client)
        assert client.connections >= 2   # the cut connection, then a new one
    gets = blob_gets(fake, BIG)
    assert len(gets) == 2 and gets[1]["Range"] == f"bytes={cut}-"
    lamina.assert_consistent()
