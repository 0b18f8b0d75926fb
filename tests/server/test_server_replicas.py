"""Replicas in-process: two registry apps over one blob directory and one PostgreSQL
database (a real server, pg_fixture.py).  An upload moves between them, a token one
issues the other accepts, gc keeps what a manifest or a live replica's lease names and
frees the rest, a dead replica's leases go, the schema is versioned and migrated, and a
PostgreSQL outage is a 503 that heals by itself."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from pg_fixture import Postgres
from server_helpers import digest_of, error_code, make_image, push_blob, push_image, random_bytes
from test_server_auth import bearer, token, write_config

from lamina.errors import InvalidInput
from lamina.server import load_config, schema
from lamina.server.app import Registry
from lamina.server.gc_pg import collect
from lamina.server.meta_pg import LOCK_GC, LOCK_NS, PostgresDb
from lamina.store import Store
from lamina.store.gc import collect as store_collect

pytestmark = pytest.mark.anyio


def one(app: Registry) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")


async def pull_verified(c: httpx.AsyncClient, repo: str, ref: str) -> None:
    """GET the manifest and every blob it names; each must hash to its digest."""
    r = await c.get(f"/v2/{repo}/manifests/{ref}",
                    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200, r.text
    doc = r.json()
    for d in [doc["config"], *doc["layers"]]:
        r = await c.get(f"/v2/{repo}/blobs/{d['digest']}")
        assert r.status_code == 200, (d, r.text)
        assert digest_of(r.content) == d["digest"] and len(r.content) == d["size"]


async def test_push_one_pull_other(make_replicas: Any) -> None:
    (a, b), _ = make_replicas()
    image = make_image(1, n_layers=3)
    async with one(a) as ca, one(b) as cb:
        await push_image(ca, "rep/one", "v1", image)
        await pull_verified(cb, "rep/one", "v1")
        r = await cb.get("/v2/rep/one/tags/list")
        assert r.json() == {"name": "rep/one", "tags": ["v1"]}
        # a mount on b of what a pushed, then the manifest through b
        layer = image.layers[0]
        r = await cb.post("/v2/rep/two/blobs/uploads/",
                          params={"mount": digest_of(layer), "from": "rep/one"})
        assert r.status_code == 201, r.text


async def test_upload_moves_between_replicas(make_replicas: Any) -> None:
    (a, b), _ = make_replicas()
    blob = random_bytes(300_000, 5)
    async with one(a) as ca, one(b) as cb:
        r = await ca.post("/v2/mv/x/blobs/uploads/")
        loc = r.headers["location"]
        r = await ca.patch(loc, content=blob[:100_000], headers={"Content-Range": "0-99999"})
        assert r.status_code == 202
        r = await cb.patch(loc, content=blob[100_000:200_000],
                           headers={"Content-Range": "100000-199999"})
        assert r.status_code == 202 and r.headers["range"] == "0-199999"
        # a still holds the writer it had: stale now, it resumes from the row instead
        r = await ca.get(loc)
        assert r.status_code == 204 and r.headers["range"] == "0-199999"
        r = await cb.put(loc, params={"digest": digest_of(blob)}, content=blob[200_000:],
                         headers={"Content-Range": "200000-299999"})
        assert r.status_code == 201, r.text
        r = await ca.get(f"/v2/mv/x/blobs/{digest_of(blob)}")
        assert r.status_code == 200 and r.content == blob
        assert (await ca.get(loc)).status_code == 404
        assert (await cb.get(loc)).status_code == 404
    assert not list(a.store.blobs.ingest_dir.iterdir())


async def test_token_from_one_accepted_by_other(make_replicas: Any, tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    text = cfg_path.read_text().replace('token_secret = "test-secret"\n', "")
    cfg_path.write_text(text)          # no shared secret in the config: the database's
    (a, b), _ = make_replicas(cfg=load_config(cfg_path))
    async with one(a) as ca, one(b) as cb:
        tok, _ = await token(ca, "repository:team/app:pull,push", "alice")
        blob = random_bytes(1000, 2)
        r = await cb.post("/v2/team/app/blobs/uploads/", params={"digest": digest_of(blob)},
                          content=blob, headers=bearer(tok))
        assert r.status_code == 201, r.text
        r = await ca.get(f"/v2/team/app/blobs/{digest_of(blob)}", headers=bearer(tok))
        assert r.status_code == 200 and r.content == blob
        r = await cb.get(f"/v2/team/app/blobs/{digest_of(blob)}",
                         headers=bearer(tok[:-2] + "xx"))
        assert r.status_code == 401


def _blobs(store: Store) -> set[str]:
    return {str(d) for d in store.blobs.list()}


async def test_gc_keeps_referenced_frees_the_rest(make_replicas: Any) -> None:
    (a, b), _ = make_replicas()
    kept, dropped = make_image(3), make_image(4)
    orphan = random_bytes(4000, 9)
    async with one(a) as ca, one(b) as cb:
        await push_image(ca, "gc/kept", "v1", kept)
        await push_image(cb, "gc/dropped", "v1", dropped)
        await push_blob(ca, "gc/kept", orphan)
        r = await cb.delete(f"/v2/gc/dropped/manifests/{dropped.digest}")
        assert r.status_code == 202
        db = a.state.db
        assert isinstance(db, PostgresDb)
        # every blob is still leased: gc with the TTL in force removes nothing
        report = collect(a.store, a.blobstore, db, lease_ttl=3600)
        assert report.blobs_removed == []
        # leases past their TTL: what no manifest reaches goes, the rest stays
        report = collect(a.store, a.blobstore, db, lease_ttl=0.001)
        gone = {digest_of(x) for x in [*dropped.blobs(), dropped.manifest, orphan]}
        assert set(report.blobs_removed) == gone
        assert gone.isdisjoint(_blobs(a.store))
        await pull_verified(cb, "gc/kept", "v1")


async def test_gc_drops_a_dead_replicas_leases(make_replicas: Any) -> None:
    (a, b), _ = make_replicas()
    blob_a, blob_b = random_bytes(2000, 11), random_bytes(2000, 12)
    async with one(a) as ca, one(b) as cb:
        await push_blob(ca, "dead/a", blob_a)
        await push_blob(cb, "dead/b", blob_b)
    db = a.state.db
    assert isinstance(db, PostgresDb)
    # b's process "dies": its liveness connection goes (and its lock), it beats no more
    replica = b.lease
    replica._stop.set()                                        # type: ignore[attr-defined]
    replica._thread.join()                                     # type: ignore[attr-defined]
    replica._conn.close()                                      # type: ignore[attr-defined]
    with db.transaction() as tx:
        tx.execute("UPDATE registry_replicas SET heartbeat = now() - interval '1 hour' "
                   "WHERE id IN (?, ?)", (a.lease.id, b.lease.id))  # type: ignore[attr-defined]
    report = collect(a.store, a.blobstore, db, lease_ttl=3600)
    # a's lock is held (it lives, however stale its beat): its lease stands
    assert report.replicas_dead == 1
    assert report.blobs_removed == [digest_of(blob_b)]
    assert digest_of(blob_a) in _blobs(a.store)


async def test_schema_versioned_and_migrated(make_replicas: Any, tmp_path: Path) -> None:
    # SQLite: a store made by an older lamina (server tables, no version, no gen column)
    store_dir = tmp_path / "old"
    Store(store_dir).close()
    db = sqlite3.connect(store_dir / "meta.db")
    db.executescript(
        "CREATE TABLE server_uploads(uuid TEXT PRIMARY KEY, repo TEXT NOT NULL, path TEXT "
        "NOT NULL, offset INTEGER NOT NULL, started REAL NOT NULL, expires REAL NOT NULL);"
        "INSERT INTO server_uploads VALUES('u','r','/nowhere',0,0,0);")
    db.close()
    from lamina.server import create_app

    store = Store(store_dir)
    app = create_app(store)
    assert app.state.db.rows("SELECT version FROM registry_schema") == [(schema.VERSION,)]
    assert app.state.upload("u") is not None and app.state.upload("u").gen == 0  # type: ignore[union-attr]
    app.state.close()
    store.close()
    # PostgreSQL: at the current version; a newer one is refused with one line
    (a, _b), _ = make_replicas()
    pg = a.state.db
    assert isinstance(pg, PostgresDb)
    assert pg.rows("SELECT version FROM registry_schema") == [(schema.VERSION,)]
    with pg.transaction() as tx:
        tx.execute("UPDATE registry_schema SET version=?", (schema.VERSION + 1,))
    with pytest.raises(Exception, match="schema version .* upgrade lamina"):
        PostgresDb(pg.url)


async def test_outage_is_503_and_heals(make_replicas: Any, pg_server: Postgres,
                                       caplog: pytest.LogCaptureFixture) -> None:
    (a, b), _ = make_replicas()
    image = make_image(7)
    async with one(a) as ca, one(b) as cb:
        await push_image(ca, "out/x", "v1", image)
        pg_server.stop()
        try:
            with caplog.at_level(logging.WARNING, logger="lamina.server"):
                for c in (ca, cb):
                    r = await c.get("/v2/out/x/manifests/v1")
                    assert r.status_code == 503 and error_code(r) == "UNAVAILABLE", r.text
                    assert r.headers["retry-after"] == "1"
                other = make_image(8)
                blob = other.layers[0]
                r = await cb.post("/v2/out/y/blobs/uploads/",
                                  params={"digest": digest_of(blob)}, content=blob)
                assert r.status_code == 503
                r = await cb.put("/v2/out/y/manifests/v1", content=other.manifest,
                                 headers={"Content-Type": "application/vnd.oci.image."
                                                          "manifest.v1+json"})
                assert r.status_code == 503
        finally:
            pg_server.start()
        for c in (ca, cb):      # each replica comes back by itself, with its next requests
            for _ in range(100):
                if (await c.get("/v2/out/x/manifests/v1")).status_code == 200:
                    break
                await anyio.sleep(0.2)
        down = [rec for rec in caplog.records if "answering 503" in rec.getMessage()]
        # one line per replica, not one per request
        assert len(down) == 2, [rec.getMessage() for rec in caplog.records]
        assert "metadata database unavailable" in down[0].getMessage()
        await pull_verified(cb, "out/x", "v1")
        await pull_verified(ca, "out/x", "v1")
        # nothing of the refused push was committed
        r = await ca.get("/v2/out/y/manifests/v1")
        assert r.status_code == 404
        await push_image(cb, "out/y", "v1", make_image(8))
        await pull_verified(ca, "out/y", "v1")


def test_pg_fixture_database_is_fresh(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname='public'"
                            ).fetchone() == (0,)


async def test_store_gc_keeps_off_a_registry_on_postgres(make_replicas: Any) -> None:
    """The store's own gc knows none of the registry's manifests: it refuses, naming
    the command that does."""
    (a, _b), _ = make_replicas()
    async with one(a) as ca:
        await push_image(ca, "own/x", "v1", make_image(13))
    before = _blobs(a.store)
    with pytest.raises(InvalidInput, match=r"metadata is in postgresql://127\.0\.0\.1:\d+/t\d+"
                                            r": collect them with `lamina serve gc"):
        store_collect(a.store)
    assert _blobs(a.store) == before


async def test_gc_lock_orders_protect_and_refuses_a_manifest_over_a_swept_blob(
        make_replicas: Any) -> None:
    """The two halves of the rule across processes: a protect waits while a gc holds
    its lock (so a mark never misses a lease committed before it, and a sweep never
    runs under one after it), and a manifest whose blob gc swept meanwhile is refused
    with MANIFEST_BLOB_UNKNOWN — never committed over a missing blob."""
    (a, b), _ = make_replicas()
    db = a.state.db
    assert isinstance(db, PostgresDb)
    holder = psycopg.connect(db.url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s::integer, %s::integer)",
                       (LOCK_NS, LOCK_GC))
        done = threading.Event()

        def protect() -> None:
            b.lease.protect(["sha256:" + "0" * 64])
            done.set()

        t = threading.Thread(target=protect)
        t.start()
        assert not done.wait(1.0), "a protect went through while gc held its lock"
    finally:
        holder.close()          # gc ends: the lock goes with its connection
    t.join(30)
    assert done.is_set()
    image = make_image(21)
    async with one(a) as ca, one(b) as cb:
        for blob in image.blobs():
            await push_blob(ca, "swept/x", blob)
        # the leases run out before the manifest comes (lease_ttl): gc takes the blobs
        report = collect(a.store, a.blobstore, db, lease_ttl=0.001)
        assert set(report.blobs_removed) >= {digest_of(x) for x in image.blobs()}
        r = await cb.put("/v2/swept/x/manifests/v1", content=image.manifest,
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN", r.text
        assert (await ca.get("/v2/swept/x/manifests/v1")).status_code == 404
        # pushed again, the image commits and pulls
        await push_image(cb, "swept/x", "v1", image)
        await pull_verified(ca, "swept/x", "v1")
