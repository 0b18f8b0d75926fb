"""Store metadata in SQLite (WAL mode, so several lamina processes share one store).

What lives here, and why it is not in files:
  tags             name → manifest digest: what users call images
  images           image records (manifest or index digests), tagged or not
  refs             content graph edges parent → child (manifest → config/layers,
                   index → manifests, image → snapshot): gc walks them without re-parsing
  layers           layer blob digest ↔ diff_id (compressed vs uncompressed names), as
                   the image configs claim them
  layer_sizes      diff_id → bytes of the uncompressed tar (``images``' SIZE, as Docker's)
  verified_layers  layer blob digest → diff_id found by decompressing and hashing it:
                   a fact about content, so true for as long as the blob exists (a load
                   or fsck that finds a layer here does not decompress it again)
  snapshots        unpacked layer stacks keyed by chain id
  leases           protect what an import, pull or build is still writing from gc
  blob_sources     which registry repositories a blob is known to be in (for
                   cross-repository mounts on push)
  build_cache      step cache key → the layer that step made (a root for gc, as
                   BuildKit's cache records; ``gc --cache`` drops them all)
  chunk_contents   uncompressed content digest → stored chunks (compressed frames) that
                   hold it: how a delta pull finds a frame it has from a TOC's
                   uncompressed chunk digests (gc drops rows of chunks it removes)
  containers       containers that outlive one command (store/containers.py): their
                   spec, state and exit status, and the nodes they keep from gc
  chunk_pending    zstd:chunked layers kept whole, with the annotations that locate their
                   TOC: cut into chunks when something first shares their content
  pending_contents uncompressed content digest → kept-whole layer holding it (each
                   layer's TOC read once, when sharing is first looked for)

Node keys in ``refs`` and leases are strings: a blob is its digest (``sha256:…``), a
snapshot is ``snapshot:<chain id>``.  The store knows nothing of manifest formats: the
room that writes a manifest also says what it references.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import NoSpace, StoreBusy, StoreError

# Tables added after version 1, one statement list per version: a store made by an
# older lamina gets them the first time a newer one opens it (``_migrate``).
_MIGRATIONS: tuple[str, ...] = (
    # 2: containers (issue 12).  ``spec`` and ``roots`` are JSON: the run's settings, and
    # the blobs and snapshots gc must keep while the container exists.
    """CREATE TABLE IF NOT EXISTS containers(
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, image TEXT NOT NULL,
        created REAL NOT NULL, spec TEXT NOT NULL, roots TEXT NOT NULL,
        state TEXT NOT NULL, pid INTEGER, pid_start INTEGER, started REAL, finished REAL,
        exit_code INTEGER, error TEXT NOT NULL DEFAULT '', health TEXT NOT NULL DEFAULT '')""",
    # 3-5: zstd:chunked layers stored whole, not yet cut into chunks (issue 11): the
    # blob, its descriptor's annotations (JSON: where its TOC is), whether its TOC's
    # contents are in pending_contents yet (read once, when sharing is first looked for).
    """CREATE TABLE IF NOT EXISTS chunk_pending(
        blob TEXT PRIMARY KEY, annotations TEXT NOT NULL,
        indexed INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS pending_contents(
        content TEXT NOT NULL, blob TEXT NOT NULL, PRIMARY KEY(content, blob)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS pending_contents_blob ON pending_contents(blob)",
)
SCHEMA_VERSION = 1 + len(_MIGRATIONS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags(
    name TEXT PRIMARY KEY, digest TEXT NOT NULL, media_type TEXT NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tags_digest ON tags(digest);
CREATE TABLE IF NOT EXISTS images(
    digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, size INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refs(
    parent TEXT NOT NULL, child TEXT NOT NULL, PRIMARY KEY(parent, child)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_child ON refs(child);
CREATE TABLE IF NOT EXISTS layers(
    digest TEXT PRIMARY KEY, diff_id TEXT NOT NULL, media_type TEXT NOT NULL,
    size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS layers_diff_id ON layers(diff_id);
CREATE TABLE IF NOT EXISTS layer_sizes(diff_id TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS verified_layers(
    digest TEXT PRIMARY KEY, diff_id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots(
    chain_id TEXT PRIMARY KEY, parent TEXT, diff_id TEXT NOT NULL, size INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases(
    id TEXT PRIMARY KEY, created REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lease_resources(
    lease TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY(lease, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS build_cache(
    key TEXT PRIMARY KEY, layer TEXT NOT NULL, diff_id TEXT NOT NULL, media_type TEXT NOT NULL,
    size INTEGER NOT NULL, created_by TEXT NOT NULL, created REAL NOT NULL, used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS build_cache_layer ON build_cache(layer);
CREATE TABLE IF NOT EXISTS blob_sources(
    digest TEXT NOT NULL, registry TEXT NOT NULL, repository TEXT NOT NULL,
    PRIMARY KEY(digest, registry, repository)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_contents(
    content TEXT NOT NULL, chunk TEXT NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY(content, chunk)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunk_contents_chunk ON chunk_contents(chunk);
CREATE TABLE IF NOT EXISTS layer_conversions(
    source TEXT NOT NULL, target TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    media_type TEXT NOT NULL, annotations TEXT NOT NULL,
    PRIMARY KEY(source, target)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the schema from the version the store records to SCHEMA_VERSION (inside the
    caller's transaction, so two processes opening an old store migrate it once)."""
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    version = int(row[0]) if row and str(row[0]).isdigit() else 1
    for number, statement in enumerate(_MIGRATIONS, start=2):
        if number > version:
            db.execute(statement)
    if version < SCHEMA_VERSION:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))


NO_SPACE_HINT = "free space or run `lamina gc`"
_TIGHT = 1 << 20   # less free than this, and an I/O error of SQLite is a full disk


def no_space_left(path: Path, needed: int = 0) -> bool:
    """Whether the file system holding ``path`` is all but full (with ``needed`` bytes
    more taken)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _TIGHT + needed


def _store_error(e: sqlite3.DatabaseError) -> StoreError:
    text = str(e)
    if "locked" in text or "busy" in text:
        return StoreBusy(f"store metadata is locked by another process: {text}")
    if "disk is full" in text or "disk I/O" in text:
        return NoSpace(f"no space left on device: cannot write store metadata ({text}); "
                       f"{NO_SPACE_HINT}")
    return StoreError(f"store metadata: {text}")


@dataclass(frozen=True)
class TagRecord:
    name: str
    digest: str
    media_type: str
    updated: float


@dataclass(frozen=True)
class ImageRecord:
    digest: str
    media_type: str
    size: int
    created: float


@dataclass(frozen=True)
class CacheRecord:
    key: str
    layer: str
    diff_id: str
    media_type: str
    size: int
    created_by: str
    # When the layer was first made (a build reuses it as its history time, as BuildKit
    # dates a cached layer by its ref's creation); None: now, on cache_put.
    created: float | None = None


@dataclass(frozen=True)
class LayerRecord:
    digest: str
    diff_id: str
    media_type: str
    size: int


class Metadata:
    """One connection to the metadata database; safe to share between threads."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = self._connect(path, timeout)
        except sqlite3.DatabaseError as e:
            # In WAL mode even a reader must create meta.db-wal and -shm: on a full file
            # system that fails as "disk I/O error" (SQLITE_IOERR), not "disk is full".
            if "full" in str(e) or no_space_left(path.parent):
                raise NoSpace(f"no space left on device: cannot open store metadata {path} "
                              f"({e}); {NO_SPACE_HINT}") from None
            raise StoreError(f"store metadata {path} is unusable: {e}") from None

    @staticmethod
    def _connect(path: Path, timeout: float) -> sqlite3.Connection:
        """Connect, switch to WAL and create the schema, retrying while another process
        is doing the same.  Two processes opening a new store at once (two imports)
        could fail with "database is locked": turning a database to WAL takes an
        exclusive lock, and SQLite answers SQLITE_BUSY at once, without the busy
        handler, where waiting could deadlock (sqlite.org/wal.html, "Concurrency";
        lang_transaction.html).  Opening again after a short wait is always safe."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            db = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                db.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.execute("INSERT OR IGNORE INTO meta VALUES('schema', '1')")
                    _migrate(db)
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
                return db
            except sqlite3.OperationalError as e:
                db.close()
                text = str(e)
                if ("locked" not in text and "busy" not in text) \
                        or time.monotonic() + delay > deadline:
                    raise
            except BaseException:
                db.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: takes the write lock at once, so read-then-write
        sequences (gc's mark and sweep) see no writer in between."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise _store_error(e) from None
            try:
                yield self._db
            except sqlite3.DatabaseError as e:
                self._rollback()
                raise _store_error(e) from None
            except BaseException:
                self._rollback()
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                self._rollback()
                raise _store_error(e) from None

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.DatabaseError):
            self._db.execute("ROLLBACK")

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Rows of one read (no write lock: WAL readers never wait for writers)."""
        return self._query(sql, args)

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise _store_error(e) from None

    # -- settings (the meta table) -----------------------------------------------------
    def setting(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES(?,?)", (key, value))

    # -- tags ------------------------------------------------------------------------
    def set_tag(self, name: str, digest: str, media_type: str) -> str | None:
        """Point ``name`` at ``digest``; returns the digest it pointed at before."""
        with self.transaction() as db:
            row = db.execute("SELECT digest FROM tags WHERE name=?", (name,)).fetchone()
            db.execute("INSERT OR REPLACE INTO tags VALUES(?,?,?,?)",
                       (name, digest, media_type, time.time()))
        return str(row[0]) if row else None

    def get_tag(self, name: str) -> TagRecord | None:
        rows = self._query("SELECT name, digest, media_type, updated FROM tags WHERE name=?",
                           (name,))
        return TagRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def delete_tag(self, name: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM tags WHERE name=?", (name,)).rowcount > 0

    def tags(self) -> list[TagRecord]:
        rows = self._query("SELECT name, digest, media_type, updated FROM tags ORDER BY name")
        return [TagRecord(*r) for r in rows]  # type: ignore[arg-type]

    def tags_for(self, digest: str) -> list[str]:
        return [str(r[0]) for r in self._query(
            "SELECT name FROM tags WHERE digest=? ORDER BY name", (digest,))]

    # -- images and the content graph -------------------------------------------------
    def add_image(self, digest: str, media_type: str, size: int, children: Iterable[str],
                  tag: str | None = None) -> None:
        """Record an image (manifest or index) and its edges, and tag it, atomically."""
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO images VALUES(?,?,?,?)",
                       (digest, media_type, size, now))
            db.executemany("INSERT OR IGNORE INTO refs VALUES(?,?)",
                           [(digest, c) for c in children])
            if tag is not None:
                db.execute("INSERT OR REPLACE INTO tags VALUES(?,?,?,?)",
                           (tag, digest, media_type, now))

    def add_refs(self, parent: str, children: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO refs VALUES(?,?)",
                           [(parent, c) for c in children])

    def get_image(self, digest: str) -> ImageRecord | None:
        rows = self._query("SELECT digest, media_type, size, created FROM images WHERE digest=?",
                           (digest,))
        return ImageRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def images(self) -> list[ImageRecord]:
        rows = self._query("SELECT digest, media_type, size, created FROM images "
                           "ORDER BY created DESC")
        return [ImageRecord(*r) for r in rows]  # type: ignore[arg-type]

    def find_images(self, prefix: str) -> list[str]:
        """Image digests whose encoded part starts with ``prefix`` (short ids)."""
        pattern = prefix.replace("_", "\\_").replace("%", "") + "%"
        rows = self._query("SELECT digest FROM images WHERE substr(digest, instr(digest, ':')+1) "
                           "LIKE ? ESCAPE '\\'", (pattern,))
        return [str(r[0]) for r in rows]

    def delete_image(self, digest: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM images WHERE digest=?", (digest,))
            db.execute("DELETE FROM refs WHERE parent=?", (digest,))

    def children(self, parent: str) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT child FROM refs WHERE parent=?",
                                               (parent,))]

    def parents(self, child: str) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT parent FROM refs WHERE child=?",
                                               (child,))]

    def all_refs(self) -> list[tuple[str, str]]:
        return [(str(p), str(c)) for p, c in self._query("SELECT parent, child FROM refs")]

    # -- layers -------------------------------------------------------------------------
    def add_layer(self, digest: str, diff_id: str, media_type: str, size: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO layers VALUES(?,?,?,?)",
                       (digest, diff_id, media_type, size))

    def layer(self, digest: str) -> LayerRecord | None:
        rows = self._query("SELECT digest, diff_id, media_type, size FROM layers WHERE digest=?",
                           (digest,))
        return LayerRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def layers_by_diff_id(self, diff_id: str) -> list[LayerRecord]:
        rows = self._query("SELECT digest, diff_id, media_type, size FROM layers "
                           "WHERE diff_id=?", (diff_id,))
        return [LayerRecord(*r) for r in rows]  # type: ignore[arg-type]

    def layers(self) -> list[LayerRecord]:
        rows = self._query("SELECT digest, diff_id, media_type, size FROM layers")
        return [LayerRecord(*r) for r in rows]  # type: ignore[arg-type]

    def add_verified_layer(self, digest: str, diff_id: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO verified_layers VALUES(?,?)", (digest, diff_id))

    def verified_diff_id(self, digest: str) -> str | None:
        """The diff_id a layer blob was found to have, if it was ever checked."""
        rows = self._query("SELECT diff_id FROM verified_layers WHERE digest=?", (digest,))
        return str(rows[0][0]) if rows else None

    # -- snapshots ----------------------------------------------------------------------
    def set_unpacked_size(self, diff_id: str, size: int) -> None:
        """Record a layer's uncompressed size (a fact of its diff_id: never changes)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO layer_sizes VALUES(?,?)", (diff_id, size))

    def unpacked_sizes(self, diff_ids: Iterable[str]) -> dict[str, int]:
        """Recorded uncompressed sizes; a snapshot's size (the uncompressed tar it was
        applied from, its diff_id checked) counts too."""
        wanted = list(dict.fromkeys(diff_ids))
        out: dict[str, int] = {}
        for i in range(0, len(wanted), 400):  # SQLite's limit on bound parameters
            chunk = wanted[i:i + 400]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT diff_id, size FROM snapshots WHERE diff_id IN ({marks})"
                               f" UNION ALL SELECT diff_id, size FROM layer_sizes WHERE "
                               f"diff_id IN ({marks})", (*chunk, *chunk))
            out.update((str(d), int(n)) for d, n in rows)  # type: ignore[call-overload]
        return out

    def add_snapshot(self, chain_id: str, parent: str | None, diff_id: str, size: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO snapshots VALUES(?,?,?,?,?)",
                       (chain_id, parent, diff_id, size, time.time()))

    def snapshots(self) -> list[tuple[str, str | None, str, int]]:
        return [(str(a), None if b is None else str(b), str(c), int(d))  # type: ignore[call-overload]
                for a, b, c, d in self._query(
                    "SELECT chain_id, parent, diff_id, size FROM snapshots")]

    def has_snapshot(self, chain_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM snapshots WHERE chain_id=?", (chain_id,)))

    # -- leases -------------------------------------------------------------------------
    def create_lease(self, ttl: float = 3600.0, lease_id: str | None = None) -> str:
        """A lease that lives until ``delete_lease`` or ``ttl`` seconds, whichever
        comes first, unless its owner holds a lock file (Store.open_lease)."""
        lease_id = lease_id or os.urandom(8).hex()
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO leases VALUES(?,?,?)", (lease_id, now, now + ttl))
        return lease_id

    def add_lease_resource(self, lease_id: str, key: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO lease_resources VALUES(?,?)", (lease_id, key))

    def add_lease_resources(self, lease_id: str, keys: Iterable[str]) -> None:
        """Many at once (a delta pull leases every chunk it will reuse)."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO lease_resources VALUES(?,?)",
                           [(lease_id, k) for k in keys])

    def delete_lease(self, lease_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM lease_resources WHERE lease=?", (lease_id,))
            db.execute("DELETE FROM leases WHERE id=?", (lease_id,))

    def leases(self) -> list[tuple[str, float]]:
        return [(str(a), float(b)) for a, b in self._query(  # type: ignore[arg-type]
            "SELECT id, expires FROM leases")]

    def find_parents_by_child_prefix(self, prefix: str) -> list[str]:
        rows = self._query("SELECT DISTINCT parent FROM refs WHERE child >= ? AND child < ?",
                           (prefix, prefix + "\uffff"))
        return [str(r[0]) for r in rows]

    # -- build cache ------------------------------------------------------------------------
    def cache_get(self, key: str) -> CacheRecord | None:
        rows = self._query("SELECT key, layer, diff_id, media_type, size, created_by, created "
                           "FROM build_cache WHERE key=?", (key,))
        if not rows:
            return None
        with self.transaction() as db:
            db.execute("UPDATE build_cache SET used=? WHERE key=?", (time.time(), key))
        return CacheRecord(*rows[0])  # type: ignore[arg-type]

    def cache_put(self, rec: CacheRecord) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO build_cache VALUES(?,?,?,?,?,?,?,?)",
                       (rec.key, rec.layer, rec.diff_id, rec.media_type, rec.size,
                        rec.created_by, now if rec.created is None else rec.created, now))

    def cache_entries(self) -> list[CacheRecord]:
        rows = self._query("SELECT key, layer, diff_id, media_type, size, created_by, created "
                           "FROM build_cache")
        return [CacheRecord(*r) for r in rows]  # type: ignore[arg-type]

    # -- where blobs came from ---------------------------------------------------------------
    def add_blob_sources(self, registry: str, repository: str, digests: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO blob_sources VALUES(?,?,?)",
                           [(d, registry, repository) for d in digests])

    def blob_sources(self, digest: str, registry: str) -> list[str]:
        rows = self._query("SELECT repository FROM blob_sources WHERE digest=? AND registry=? "
                           "ORDER BY repository", (digest, registry))
        return [str(r[0]) for r in rows]

    # -- chunks by their uncompressed content ---------------------------------------------
    def record_chunk_content(self, content: str, chunk: str, length: int) -> None:
        """The stored chunk ``chunk`` (``length`` bytes) decompresses to content whose
        digest is ``content``.  Record it after the chunk is published (never while
        holding the chunk lock: gc holds this database while it waits for that lock)."""
        self.record_chunk_contents([(content, chunk, length)])

    def record_chunk_contents(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Many ``(content, chunk, length)`` rows in one transaction."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO chunk_contents VALUES(?,?,?)",
                           [(c, k, int(n)) for c, k, n in rows])

    def add_chunk_pending(self, blob: str, annotations: str) -> None:
        """The zstd:chunked layer ``blob`` is kept whole for now (``annotations``: its
        descriptor's, JSON)."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO chunk_pending(blob, annotations) VALUES(?,?)",
                       (blob, annotations))

    def chunk_pending(self, indexed: bool | None = None) -> list[tuple[str, str]]:
        """``(blob, annotations JSON)`` of the chunked layers kept whole (``indexed``:
        only those whose contents are, or are not, in ``pending_contents``)."""
        where = "" if indexed is None else f" WHERE indexed={int(indexed)}"
        rows = self._query(f"SELECT blob, annotations FROM chunk_pending{where} ORDER BY blob")
        return [(str(b), str(a)) for b, a in rows]

    def has_chunk_pending(self, besides: Iterable[str] = ()) -> bool:
        """Whether a chunked layer other than those ``besides`` is kept whole."""
        skip = set(besides)
        rows = self._query("SELECT blob FROM chunk_pending LIMIT ?", (len(skip) + 1,))
        return any(str(b) not in skip for (b,) in rows)

    def has_shareable(self, besides: Iterable[str] = ()) -> bool:
        """Whether a delta pull could reuse anything here: stored chunks with known
        contents, or chunked layers kept whole (but for ``besides``)."""
        return self.has_chunk_contents() or self.has_chunk_pending(besides)

    def index_chunk_pending(self, blob: str, contents: Iterable[str]) -> None:
        """The contents a kept-whole layer's TOC names (read once)."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO pending_contents VALUES(?,?)",
                           [(c, blob) for c in set(contents)])
            db.execute("UPDATE chunk_pending SET indexed=1 WHERE blob=?", (blob,))

    def pending_marks(self, blob: str) -> str | None:
        """The annotations JSON of a kept-whole layer; None if it is not listed."""
        rows = self._query("SELECT annotations FROM chunk_pending WHERE blob=?", (blob,))
        return str(rows[0][0]) if rows else None

    def pending_sharing(self, contents: Iterable[str]) -> set[str]:
        """The kept-whole layers (indexed) that hold any of ``contents``."""
        return {str(b) for (b,) in self._query_in(
            "SELECT DISTINCT blob FROM pending_contents WHERE content IN ({})", contents)}

    def pending_contents_of(self, blob: str) -> list[str]:
        return [str(c) for (c,) in self._query(
            "SELECT content FROM pending_contents WHERE blob=?", (blob,))]

    def stored_sharing(self, contents: Iterable[str]) -> bool:
        """Whether any stored chunk holds one of ``contents`` (``chunk_contents``)."""
        return bool(self._query_in(
            "SELECT 1 FROM chunk_contents WHERE content IN ({}) LIMIT 1", contents, first=True))

    def _query_in(self, sql: str, values: Iterable[str],
                  first: bool = False) -> list[tuple[object, ...]]:
        """``sql`` with its ``IN ({})`` over ``values``, in batches under SQLite's limit
        of bound parameters; ``first``: stop at the first batch that answers."""
        wanted = sorted(set(values))
        rows: list[tuple[object, ...]] = []
        for at in range(0, len(wanted), 500):
            part = tuple(wanted[at:at + 500])
            rows += self._query(sql.format(",".join("?" * len(part))), part)
            if first and rows:
                break
        return rows

    def drop_chunk_pending(self, blob: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM chunk_pending WHERE blob=?", (blob,))
            db.execute("DELETE FROM pending_contents WHERE blob=?", (blob,))

    def has_chunk_contents(self) -> bool:
        """Whether any chunk's content is known (else a delta pull has nothing to reuse)."""
        return bool(self._query("SELECT 1 FROM chunk_contents LIMIT 1"))

    def find_chunk_for_content(self, content: str) -> list[tuple[str, int]]:
        """Stored chunks whose bytes hold the content ``content``: ``(chunk digest,
        length)``, shortest first.  A caller still asks ``has_chunk`` (and leases what it
        will use): a row may outlive its chunk until the next gc."""
        rows = self._query("SELECT chunk, length FROM chunk_contents WHERE content=? "
                           "ORDER BY length, chunk", (content,))
        return [(str(c), int(n)) for c, n in rows]  # type: ignore[call-overload]

    # -- layers converted to another compression (copy/push/save --dest-compress-format) ----
    def add_conversion(self, source: str, target: str, digest: str, size: int,
                       media_type: str, annotations: str) -> None:
        """Layer ``source`` written as ``target`` (``format:level``) is the blob ``digest``
        (``annotations``: JSON).  A record, not a reference: the blob need not be here."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO layer_conversions VALUES(?,?,?,?,?,?)",
                       (source, target, digest, size, media_type, annotations))

    def conversion(self, source: str, target: str) -> tuple[str, int, str, str] | None:
        """``(digest, size, media type, annotations JSON)`` of a recorded conversion."""
        rows = self._query("SELECT digest, size, media_type, annotations FROM "
                           "layer_conversions WHERE source=? AND target=?", (source, target))
        if not rows:
            return None
        digest, size, media_type, annotations = rows[0]
        return str(digest), int(size), str(media_type), str(annotations)  # type: ignore[call-overload]
