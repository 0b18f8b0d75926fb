"""The registry's own tables, in the store's SQLite database (``meta.db``).

The store already knows tags, image records and the content graph; a registry adds what
the distribution API needs on top:

  server_manifests  repository ↔ manifest membership: a manifest pushed by digest only
                    belongs to the repository it was pushed to (its image record is a
                    gc root like any other); DELETE removes the membership.
  server_blobs      repository ↔ blob links: a repository sees only blobs linked to it by
                    an upload, a mount, or one of its manifests.  The bytes are stored
                    once, in ``blobs/``, however many repositories link them.
  server_uploads    upload sessions (for resuming after a restart, and expiry).
  server_referrers  subject digest → referrer manifest, per repository (referrers API).

Writes go through ``store.meta`` (one serialised connection, IMMEDIATE transactions;
callers run them in worker threads).  Reads on the hot paths use a second, read-only
connection of this object's own: in WAL mode it never waits for a writer, so a ``lamina
gc`` holding the write lock in another process never stalls the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lamina.errors import StoreError
from lamina.server.names import split_store_tag, store_tag_range
from lamina.store.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS server_manifests(
    repo TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY(repo, digest)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS server_manifests_digest ON server_manifests(digest);
CREATE TABLE IF NOT EXISTS server_blobs(
    repo TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY(repo, digest)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS server_blobs_digest ON server_blobs(digest);
CREATE TABLE IF NOT EXISTS server_uploads(
    uuid TEXT PRIMARY KEY, repo TEXT NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL,
    started REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS server_referrers(
    repo TEXT NOT NULL, subject TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
    size INTEGER NOT NULL, artifact_type TEXT, annotations TEXT, created REAL NOT NULL,
    PRIMARY KEY(repo, subject, digest)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class UploadRow:
    uuid: str
    repo: str
    path: str
    offset: int
    started: float
    expires: float


@dataclass(frozen=True)
class Referrer:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str]

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


class RegistryState:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.meta = store.meta
        with self.meta.transaction() as db:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
        self._rd = sqlite3.connect(self.meta.path, isolation_level=None,
                                   check_same_thread=False)
        self._rd.execute("PRAGMA query_only=1")
        self._rd.execute("PRAGMA busy_timeout=10000")
        self._rd_lock = threading.Lock()

    def close(self) -> None:
        self._rd.close()

    # -- reads (read-only connection) -------------------------------------------------
    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._rd_lock:
            try:
                return self._rd.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise StoreError(f"store metadata: {e}") from None

    def resolve_tag(self, repo: str, tag: str, store_name: str
                    ) -> tuple[str, str, int | None] | None:
        """(digest, media type, membership size or None) of ``repo:tag``."""
        rows = self._q(
            "SELECT t.digest, t.media_type, m.size FROM tags t LEFT JOIN server_manifests m "
            "ON m.repo=? AND m.digest=t.digest WHERE t.name=?", (repo, store_name))
        return (str(rows[0][0]), str(rows[0][1]), rows[0][2]) if rows else None

    def member(self, repo: str, digest: str) -> tuple[str, int] | None:
        rows = self._q("SELECT media_type, size FROM server_manifests WHERE repo=? AND digest=?",
                       (repo, digest))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def members(self, repo: str, digests: Iterable[str]) -> set[str]:
        return self._present("server_manifests", repo, digests)

    def linked(self, repo: str, digest: str) -> bool:
        return bool(self._q("SELECT 1 FROM server_blobs WHERE repo=? AND digest=?",
                            (repo, digest)))

    def links(self, repo: str, digests: Iterable[str]) -> set[str]:
        return self._present("server_blobs", repo, digests)

    def _present(self, table: str, repo: str, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` ``table`` holds for ``repo``, 500 to a query (SQLite's
        bound-parameter limit is 999 on older builds)."""
        wanted = list(dict.fromkeys(digests))
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            rows = self._q(f"SELECT digest FROM {table} WHERE repo=? AND digest IN "
                           f"({','.join('?' * len(part))})", (repo, *part))
            found.update(str(r[0]) for r in rows)
        return found

    def repos_linking(self, digest: str) -> list[str]:
        return [str(r[0]) for r in self._q(
            "SELECT repo FROM server_blobs WHERE digest=? ORDER BY repo", (digest,))]

    def repo_exists(self, repo: str) -> bool:
        lo, hi = store_tag_range(repo)
        return bool(self._q(
            "SELECT 1 WHERE EXISTS(SELECT 1 FROM server_manifests WHERE repo=?) "
            "OR EXISTS(SELECT 1 FROM server_blobs WHERE repo=?) "
            "OR EXISTS(SELECT 1 FROM tags WHERE name>=? AND name<?)", (repo, repo, lo, hi)))

    def tags(self, repo: str, last: str | None, limit: int | None) -> list[str]:
        """Tags of ``repo`` after ``last``, in byte order (Go's sort.Strings)."""
        lo, hi = store_tag_range(repo)
        op = ">="
        if last is not None:
            lo, op = lo + last, ">"
        sql = f"SELECT name FROM tags WHERE name{op}? AND name<? ORDER BY name"
        args: tuple[Any, ...] = (lo, hi)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        return [str(r[0]).rpartition(":")[2] for r in self._q(sql, args)]

    def unadopted_tags(self, repo: str) -> list[tuple[str, str, str]]:
        """(tag, digest, media type) of store tags of ``repo`` with no membership yet
        (images ``lamina build``/``load``/``pull`` made)."""
        lo, hi = store_tag_range(repo)
        rows = self._q("SELECT t.name, t.digest, t.media_type FROM tags t WHERE t.name>=? "
                       "AND t.name<? AND NOT EXISTS(SELECT 1 FROM server_manifests m WHERE "
                       "m.repo=? AND m.digest=t.digest)", (lo, hi, repo))
        return [(str(n).rpartition(":")[2], str(d), str(m)) for n, d, m in rows]

    def repositories(self) -> list[str]:
        names = {str(r[0]) for r in self._q("SELECT DISTINCT repo FROM server_manifests")}
        for (name,) in self._q("SELECT name FROM tags WHERE name>='docker.io/' AND "
                               "name<'docker.io0'"):
            split = split_store_tag(str(name))
            if split:
                names.add(split[0])
        return sorted(names)

    def referrers(self, repo: str, subject: str) -> list[Referrer]:
        rows = self._q("SELECT digest, media_type, size, artifact_type, annotations FROM "
                       "server_referrers WHERE repo=? AND subject=? ORDER BY created, digest",
                       (repo, subject))
        return [Referrer(str(d), str(m), int(s), None if a is None else str(a),
                         json.loads(n) if n else {}) for d, m, s, a, n in rows]

    def upload(self, uuid: str) -> UploadRow | None:
        rows = self._q("SELECT uuid, repo, path, offset, started, expires FROM server_uploads "
                       "WHERE uuid=?", (uuid,))
        return UploadRow(*rows[0]) if rows else None

    def expired_uploads(self, now: float) -> list[UploadRow]:
        rows = self._q("SELECT uuid, repo, path, offset, started, expires FROM server_uploads "
                       "WHERE expires < ?", (now,))
        return [UploadRow(*r) for r in rows]

    # -- writes (store.meta; call from worker threads) -------------------------------
    def link_blobs(self, repo: str, digests: Iterable[str]) -> None:
        with self.meta.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO server_blobs VALUES(?,?)",
                           [(repo, d) for d in digests])

    def unlink_blob(self, repo: str, digest: str) -> bool:
        with self.meta.transaction() as db:
            return db.execute("DELETE FROM server_blobs WHERE repo=? AND digest=?",
                              (repo, digest)).rowcount > 0

    def add_manifest(self, repo: str, digest: str, media_type: str, size: int,
                     links: Iterable[str], subject: str | None = None,
                     referrer: Referrer | None = None, now: float = 0.0) -> None:
        """Membership, blob links and (with ``subject``) the referrer row, atomically."""
        with self.meta.transaction() as db:
            db.execute("INSERT OR REPLACE INTO server_manifests VALUES(?,?,?,?)",
                       (repo, digest, media_type, size))
            db.executemany("INSERT OR IGNORE INTO server_blobs VALUES(?,?)",
                           [(repo, d) for d in links])
            if subject is not None and referrer is not None:
                db.execute("INSERT OR IGNORE INTO server_referrers VALUES(?,?,?,?,?,?,?,?)",
                           (repo, subject, referrer.digest, referrer.media_type,
                            referrer.size, referrer.artifact_type,
                            json.dumps(referrer.annotations) if referrer.annotations
                            else None, now))

    def remove_manifest(self, repo: str, digest: str) -> bool:
        """Drop ``digest`` from ``repo``: membership, referrer rows and the repository's
        tags pointing at it.  Returns whether the repository held it."""
        lo, hi = store_tag_range(repo)
        with self.meta.transaction() as db:
            held = db.execute("DELETE FROM server_manifests WHERE repo=? AND digest=?",
                              (repo, digest)).rowcount > 0
            held |= db.execute("DELETE FROM tags WHERE name>=? AND name<? AND digest=?",
                               (lo, hi, digest)).rowcount > 0
            db.execute("DELETE FROM server_referrers WHERE repo=? AND digest=?",
                       (repo, digest))
        return held

    def holders(self, digest: str) -> bool:
        """Whether any repository, tag or parent (an index) still holds ``digest``."""
        rows = self.meta_query(
            "SELECT 1 WHERE EXISTS(SELECT 1 FROM server_manifests WHERE digest=?) "
            "OR EXISTS(SELECT 1 FROM tags WHERE digest=?) "
            "OR EXISTS(SELECT 1 FROM refs WHERE child=?)", (digest, digest, digest))
        return bool(rows)

    def meta_query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self.meta.transaction() as db:
            return db.execute(sql, args).fetchall()

    def put_upload(self, row: UploadRow) -> None:
        with self.meta.transaction() as db:
            db.execute("INSERT OR REPLACE INTO server_uploads VALUES(?,?,?,?,?,?)",
                       (row.uuid, row.repo, row.path, row.offset, row.started, row.expires))

    def delete_upload(self, uuid: str) -> None:
        with self.meta.transaction() as db:
            db.execute("DELETE FROM server_uploads WHERE uuid=?", (uuid,))
