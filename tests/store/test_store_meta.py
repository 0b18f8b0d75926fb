"""Metadata in SQLite: tags, image records with edges, layers by diff_id, leases."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.digest import Digest
from lamina.image import mediatypes as mt
from lamina.store import Metadata, Store

M1 = str(Digest.from_bytes(b"manifest 1"))
M2 = str(Digest.from_bytes(b"manifest 2"))
C1 = str(Digest.from_bytes(b"config 1"))
L1 = str(Digest.from_bytes(b"layer 1"))
L2 = str(Digest.from_bytes(b"layer 2"))
D1 = str(Digest.from_bytes(b"diff 1"))


def test_tags_set_get_delete(store: Store) -> None:
    meta = store.meta
    assert meta.get_tag("docker.io/library/a:latest") is None
    assert meta.set_tag("docker.io/library/a:latest", M1, mt.OCI_MANIFEST) is None
    rec = meta.get_tag("docker.io/library/a:latest")
    assert rec is not None
    assert (rec.name, rec.digest, rec.media_type) == ("docker.io/library/a:latest", M1,
                                                      mt.OCI_MANIFEST)
    # Moving a tag returns where it pointed before.
    assert meta.set_tag("docker.io/library/a:latest", M2, mt.DOCKER_MANIFEST) == M1
    rec = meta.get_tag("docker.io/library/a:latest")
    assert rec is not None and (rec.digest, rec.media_type) == (M2, mt.DOCKER_MANIFEST)
    meta.set_tag("docker.io/library/b:1", M2, mt.OCI_MANIFEST)
    assert [t.name for t in meta.tags()] == ["docker.io/library/a:latest",
                                             "docker.io/library/b:1"]
    assert meta.tags_for(M2) == ["docker.io/library/a:latest", "docker.io/library/b:1"]
    assert meta.delete_tag("docker.io/library/a:latest") is True
    assert meta.delete_tag("docker.io/library/a:latest") is False
    assert meta.get_tag("docker.io/library/a:latest") is None
    assert meta.tags_for(M2) == ["docker.io/library/b:1"]


def test_metadata_survives_reopen(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.meta.set_tag("x:1", M1, mt.OCI_MANIFEST)
        s.meta.add_image(M1, mt.OCI_MANIFEST, 123, [C1, L1])
    with Store(tmp_path) as s:
        assert [t.name for t in s.meta.tags()] == ["x:1"]
        rec = s.meta.get_image(M1)
        assert rec is not None and (rec.media_type, rec.size) == (mt.OCI_MANIFEST, 123)
        assert sorted(s.meta.children(M1)) == sorted([C1, L1])
    # The database really is WAL: other processes can read while one writes.
    with sqlite3.connect(tmp_path / "meta.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_add_image_records_children_and_tag(store: Store) -> None:
    meta = store.meta
    meta.add_image(M1, mt.OCI_MANIFEST, 456, [C1, L1, L2], tag="docker.io/library/a:latest")
    rec = meta.get_image(M1)
    assert rec is not None and (rec.digest, rec.media_type, rec.size) == (M1, mt.OCI_MANIFEST,
                                                                          456)
    assert sorted(meta.children(M1)) == sorted([C1, L1, L2])
    assert meta.parents(L1) == [M1]
    assert sorted(meta.all_refs()) == sorted([(M1, C1), (M1, L1), (M1, L2)])
    tag = meta.get_tag("docker.io/library/a:latest")
    assert tag is not None and tag.digest == M1 and tag.media_type == mt.OCI_MANIFEST
    # Recording it again is harmless: no duplicate edges, same record.
    meta.add_image(M1, mt.OCI_MANIFEST, 456, [C1, L1, L2])
    assert len(meta.all_refs()) == 3
    assert [i.digest for i in meta.images()] == [M1]
    # Short ids find images by the start of their encoded digest.
    assert meta.find_images(M1[7:19]) == [M1]
    assert meta.find_images("zzzz") == []


def test_add_image_is_atomic(store: Store) -> None:
    meta = store.meta
    meta.set_tag("docker.io/library/a:latest", M2, mt.OCI_MANIFEST)

    def children() -> Iterator[str]:
        yield C1
        raise OSError("reading the manifest failed half way")

    with pytest.raises(OSError, match="half way"):
        meta.add_image(M1, mt.OCI_MANIFEST, 1, children(), tag="docker.io/library/a:latest")
    assert meta.get_image(M1) is None
    assert meta.all_refs() == []
    tag = meta.get_tag("docker.io/library/a:latest")
    assert tag is not None and tag.digest == M2
    # The connection is usable afterwards (the failed transaction was rolled back).
    meta.add_image(M1, mt.OCI_MANIFEST, 1, [C1], tag="docker.io/library/a:latest")
    tag = meta.get_tag("docker.io/library/a:latest")
    assert tag is not None and tag.digest == M1


def test_delete_image_removes_record_and_edges(store: Store) -> None:
    meta = store.meta
    meta.add_image(M1, mt.OCI_MANIFEST, 1, [C1, L1])
    meta.add_image(M2, mt.OCI_MANIFEST, 1, [C1, L2])
    meta.delete_image(M1)
    assert meta.get_image(M1) is None
    assert sorted(meta.all_refs()) == sorted([(M2, C1), (M2, L2)])


def test_layers_by_diff_id(store: Store) -> None:
    meta = store.meta
    meta.add_layer(L1, D1, mt.OCI_LAYER_GZIP, 100)
    meta.add_layer(L2, D1, mt.OCI_LAYER_ZSTD, 90)   # same content, other compression
    meta.add_layer(D1, D1, mt.OCI_LAYER, 300)       # uncompressed: digest == diff_id
    got = {(r.digest, r.media_type, r.size) for r in meta.layers_by_diff_id(D1)}
    assert got == {(L1, mt.OCI_LAYER_GZIP, 100), (L2, mt.OCI_LAYER_ZSTD, 90),
                   (D1, mt.OCI_LAYER, 300)}
    rec = meta.layer(L2)
    assert rec is not None and rec.diff_id == D1
    assert meta.layer(C1) is None
    assert meta.layers_by_diff_id(C1) == []
    # Re-adding replaces, never duplicates.
    meta.add_layer(L1, D1, mt.OCI_LAYER_GZIP, 101)
    assert len(meta.layers()) == 3
    rec = meta.layer(L1)
    assert rec is not None and rec.size == 101


def test_leases(store: Store) -> None:
    meta = store.meta
    a = meta.create_lease(ttl=100)
    b = meta.create_lease(ttl=-1)
    assert a != b
    meta.add_lease_resource(a, L1)
    meta.add_lease_resource(a, L1)  # idempotent
    expiries = dict(meta.leases())
    assert set(expiries) == {a, b}
    assert expiries[a] > expiries[b]
    meta.delete_lease(a)
    assert [x for x, _ in meta.leases()] == [b]
    with store.lease() as lease:
        lease.add(Digest.parse(L2))
        assert lease.id in dict(meta.leases())
    assert lease.id not in dict(meta.leases())


def test_lease_released_when_operation_fails(store: Store) -> None:
    with pytest.raises(RuntimeError), store.lease() as lease:
        lease.add(L1)
        raise RuntimeError("import failed")
    assert lease.id not in dict(store.meta.leases())


def test_second_connection_sees_writes(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    one = Metadata(tmp_path / "s" / "meta.db")
    two = Metadata(tmp_path / "s" / "meta.db")
    try:
        one.add_image(M1, mt.OCI_MANIFEST, 1, [C1], tag="t:1")
        tag = two.get_tag("t:1")
        assert tag is not None and tag.digest == M1
    finally:
        one.close()
        two.close()


_OPEN_AND_WRITE = '''
import sys, time
from pathlib import Path
from lamina.store.meta import Metadata
start = float(sys.argv[2])
while time.time() < start:
    pass
for i in range(250):
    meta = Metadata(Path(sys.argv[1]))
    with meta.transaction() as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES('probe', ?)", (str(i),))
    meta.close()
'''


def test_processes_opening_and_closing_one_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Two `lamina import`s into one new store failed in CI with "store metadata … is
    unusable: database is locked": switching to WAL (and the last close's checkpoint)
    take an exclusive lock, and SQLite answers an opener at once, without its busy
    timeout.  Opening is retried now; every process must get through."""
    import subprocess
    import sys
    import time

    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_WRITE, str(tmp_path / "meta.db"),
                               str(start)], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors


def test_a_store_of_schema_1_is_migrated_once(tmp_path: Path) -> None:
    """#12: a store written before the containers table existed gets it on open, its data
    kept, the version recorded; the container rows are gc roots.  #11's chunk_pending
    and pending_contents tables (schema 3-5) come with it."""
    from lamina.store.containers import ContainerRecord, Containers
    from lamina.store.gc import collect
    from lamina.store.meta import SCHEMA_VERSION

    path = tmp_path / "meta.db"
    Metadata(path).close()
    db = sqlite3.connect(path)   # as lamina before #12 left it
    db.execute("DROP TABLE containers")
    db.execute("DROP TABLE chunk_pending")
    db.execute("DROP TABLE pending_contents")
    db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.execute("INSERT INTO tags VALUES('docker.io/library/a:latest', ?, ?, 0)",
               (M1, mt.OCI_MANIFEST))
    db.commit()
    db.close()
    meta = Metadata(path)
    try:
        assert meta.query("SELECT value FROM meta WHERE key='schema'") == [
            (str(SCHEMA_VERSION),)]
        assert SCHEMA_VERSION == 5
        assert meta.get_tag("docker.io/library/a:latest") is not None
        assert meta.chunk_pending() == []
        Containers(meta).add(ContainerRecord("ab" * 32, "c1", "a", 0.0, {}, [L1]))
        assert Containers(meta).find("abab").name == "c1"
    finally:
        meta.close()
    with Store(tmp_path) as store:   # reopened: migrated already, nothing to do
        store.blobs.put_bytes(b"layer 1")
        store.blobs.put_bytes(b"layer 2")
        report = collect(store)
        assert report.blobs_removed == [L2]   # layer 1 is the container's
