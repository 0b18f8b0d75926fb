"""Every query of the registry's metadata, written once for SQLite and PostgreSQL.

The tables (schema.py); what they hold:

  tags, images,     the content graph: ``docker.io/<repo>:<tag>`` → manifest digest,
  refs, layers      manifest records (gc roots) and their edges to config, layers and
                    index children (on SQLite the store's own tables, store/meta.py)
  server_manifests  repository ↔ manifest membership: a manifest pushed by digest only
                    belongs to the repository it was pushed to; DELETE removes it.
  server_blobs      repository ↔ blob links: a repository sees only blobs linked to it by
                    an upload, a mount, or one of its manifests.  The bytes are stored
                    once, however many repositories link them.
  server_uploads    upload sessions: repository, ingest file, offset and a generation,
                    so a restarted server, or another replica, continues them.
  server_referrers  subject digest → referrer manifest, per repository (referrers API).

Each method runs on the ``Db`` (metadata.py) it was given: reads outside transactions,
writes in one transaction each, so a manifest's record, tag, membership and links are
committed together or not at all.  Writes block: call them from worker threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lamina.server.metadata import Db, Row, Tx
from lamina.server.names import split_store_tag, store_tag_range


@dataclass(frozen=True)
class UploadRow:
    uuid: str
    repo: str
    path: str
    offset: int
    started: float
    expires: float
    gen: int = 0


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


_UPLOAD = 'SELECT uuid, repo, path, "offset", started, expires, gen FROM server_uploads'


class RegistryState:
    def __init__(self, db: Db) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        return self.db.rows(sql, args)

    # -- reads ----------------------------------------------------------------------------
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
        rows = self._q(_UPLOAD + " WHERE uuid=?", (uuid,))
        return _upload_row(rows[0]) if rows else None

    def expired_uploads(self, now: float) -> list[UploadRow]:
        return [_upload_row(r) for r in self._q(_UPLOAD + " WHERE expires < ?", (now,))]

    def upload_paths(self) -> set[str]:
        """The files of every upload session (gc leaves them to expire)."""
        return {str(r[0]) for r in self._q("SELECT path FROM server_uploads")}

    def setting(self, key: str, default: str) -> str:
        """The shared setting ``key``, set to ``default`` by whoever asks first (a
        replica pair starting together agrees on one value)."""
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO registry_settings VALUES(?,?) ON CONFLICT DO NOTHING",
                       (key, default))
            return str(tx.rows("SELECT value FROM registry_settings WHERE key=?", (key,))[0][0])

    # -- writes ---------------------------------------------------------------------------
    def link_blobs(self, repo: str, digests: Iterable[str]) -> None:
        with self.db.transaction() as tx:
            _link(tx, repo, digests)

    def unlink_blob(self, repo: str, digest: str) -> bool:
        with self.db.transaction() as tx:
            return tx.execute("DELETE FROM server_blobs WHERE repo=? AND digest=?",
                              (repo, digest)) > 0

    def add_manifest(self, repo: str, digest: str, media_type: str, size: int,
                     children: Iterable[str] | None, links: Iterable[str],
                     tag: str | None = None,
                     subject: str | None = None, referrer: Referrer | None = None,
                     now: float | None = None,
                     layers: Iterable[tuple[str, str, str, int]] = ()) -> None:
        """The image record and its edges to ``children`` (None: no record, as for a
        manifest adopted from the store), the store tag ``tag``, membership in ``repo``,
        blob links, (with ``subject``) the referrer row and ``layers`` (digest, diff_id,
        media type, size), in one transaction.  An existing image record is kept (as
        ``Metadata.add_image``)."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            if children is not None:
                tx.execute("INSERT INTO images VALUES(?,?,?,?) ON CONFLICT DO NOTHING",
                           (digest, media_type, size, now))
                tx.executemany("INSERT INTO refs VALUES(?,?) ON CONFLICT DO NOTHING",
                               [(digest, c) for c in dict.fromkeys(children)])
            if tag is not None:
                tx.execute("INSERT INTO tags VALUES(?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                           "digest=excluded.digest, media_type=excluded.media_type, "
                           "updated=excluded.updated", (tag, digest, media_type, now))
            tx.execute("INSERT INTO server_manifests VALUES(?,?,?,?) ON CONFLICT(repo, digest) "
                       "DO UPDATE SET media_type=excluded.media_type, size=excluded.size",
                       (repo, digest, media_type, size))
            _link(tx, repo, links)
            if subject is not None and referrer is not None:
                tx.execute("INSERT INTO server_referrers VALUES(?,?,?,?,?,?,?,?) "
                           "ON CONFLICT DO NOTHING",
                           (repo, subject, referrer.digest, referrer.media_type,
                            referrer.size, referrer.artifact_type,
                            json.dumps(referrer.annotations) if referrer.annotations
                            else None, now))
            tx.executemany("INSERT INTO layers VALUES(?,?,?,?) ON CONFLICT(digest) DO UPDATE "
                           "SET diff_id=excluded.diff_id, media_type=excluded.media_type, "
                           "size=excluded.size", list(layers))

    def delete_tag(self, name: str) -> bool:
        with self.db.transaction() as tx:
            return tx.execute("DELETE FROM tags WHERE name=?", (name,)) > 0

    def remove_manifest(self, repo: str, digest: str) -> bool:
        """Drop ``digest`` from ``repo``: membership, referrer rows and the repository's
        tags pointing at it; then, when no repository, tag or index holds it any more,
        its image record (gc frees what only it reached).  Returns whether the
        repository held it."""
        lo, hi = store_tag_range(repo)
        with self.db.transaction() as tx:
            held = tx.execute("DELETE FROM server_manifests WHERE repo=? AND digest=?",
                              (repo, digest)) > 0
            held |= tx.execute("DELETE FROM tags WHERE name>=? AND name<? AND digest=?",
                               (lo, hi, digest)) > 0
            tx.execute("DELETE FROM server_referrers WHERE repo=? AND digest=?",
                       (repo, digest))
            if held and not tx.rows(
                    "SELECT 1 WHERE EXISTS(SELECT 1 FROM server_manifests WHERE digest=?) "
                    "OR EXISTS(SELECT 1 FROM tags WHERE digest=?) "
                    "OR EXISTS(SELECT 1 FROM refs WHERE child=?)", (digest, digest, digest)):
                tx.execute("DELETE FROM images WHERE digest=?", (digest,))
                tx.execute("DELETE FROM refs WHERE parent=?", (digest,))
        return held

    def put_upload(self, row: UploadRow) -> None:
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO server_uploads(uuid, repo, path, \"offset\", started, "
                       "expires, gen) VALUES(?,?,?,?,?,?,?) ON CONFLICT(uuid) DO UPDATE SET "
                       "repo=excluded.repo, path=excluded.path, \"offset\"=excluded.\"offset\", "
                       "started=excluded.started, expires=excluded.expires, gen=excluded.gen",
                       (row.uuid, row.repo, row.path, row.offset, row.started, row.expires,
                        row.gen))

    def move_upload(self, row: UploadRow, seen: int) -> bool:
        """Store ``row`` if the session is still at generation ``seen`` (nobody moved it
        since this process read it); returns whether it was."""
        with self.db.transaction() as tx:
            return tx.execute("UPDATE server_uploads SET path=?, \"offset\"=?, expires=?, "
                              "gen=? WHERE uuid=? AND gen=?",
                              (row.path, row.offset, row.expires, row.gen, row.uuid,
                               seen)) > 0

    def end_upload(self, uuid: str, gen: int) -> bool:
        """Delete the session's row if it is still at generation ``gen`` (the closing
        PUT claims the session); returns whether it was."""
        with self.db.transaction() as tx:
            return tx.execute("DELETE FROM server_uploads WHERE uuid=? AND gen=?",
                              (uuid, gen)) > 0

    def delete_upload(self, uuid: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM server_uploads WHERE uuid=?", (uuid,))


def _link(tx: Tx, repo: str, digests: Iterable[str]) -> None:
    tx.executemany("INSERT INTO server_blobs VALUES(?,?) ON CONFLICT DO NOTHING",
                   [(repo, d) for d in dict.fromkeys(digests)])


def _upload_row(r: Row) -> UploadRow:
    return UploadRow(str(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), float(r[5]),
                     int(r[6]))
