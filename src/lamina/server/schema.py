"""The registry's metadata schema, once for both backends (SQLite and PostgreSQL).

Migrations are numbered; ``registry_schema`` holds the highest one applied, and every
server applies the missing ones on start, inside one transaction that also holds the
backend's migration lock (SQLite: the IMMEDIATE write lock; PostgreSQL: an advisory
transaction lock), so replicas starting together migrate once.

Statements are written once with a few dialect words, filled in by ``render``:

    {text}      SQLite TEXT; PostgreSQL TEXT COLLATE "C" — tag and repository lists are
                in byte order (distribution-spec "Listing Tags": Go's sort.Strings),
                whatever locale the database was created with
    {int}       SQLite INTEGER; PostgreSQL BIGINT (blob sizes pass 2 GiB)
    {real}      SQLite REAL; PostgreSQL DOUBLE PRECISION (Unix times)
    {norowid}   SQLite WITHOUT ROWID (clustered on the key); PostgreSQL nothing

A statement starting ``pg:`` runs on PostgreSQL only: the content graph (tags, images,
refs, layers) is the store's own ``meta.db`` tables on SQLite (store/meta.py, the same
columns), so ``lamina images`` and ``lamina gc`` see what the registry holds; on
PostgreSQL the registry keeps its own copy of them, plus what replicas need (their
liveness rows, their leases, shared settings such as the token key).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from lamina.errors import StoreError

Dialect = Literal["sqlite", "postgresql"]

_WORDS: dict[Dialect, dict[str, str]] = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "real": "REAL", "norowid": " WITHOUT ROWID"},
    "postgresql": {"text": 'TEXT COLLATE "C"', "int": "BIGINT", "real": "DOUBLE PRECISION",
                   "norowid": ""},
}

MIGRATIONS: list[list[str]] = [
    # 1: the tables of the single-machine server (as lamina 0.1 created them), and on
    #    PostgreSQL the content graph and the replicas' tables.
    [
        """CREATE TABLE IF NOT EXISTS server_manifests(
            repo {text} NOT NULL, digest {text} NOT NULL, media_type {text} NOT NULL,
            size {int} NOT NULL, PRIMARY KEY(repo, digest)){norowid}""",
        "CREATE INDEX IF NOT EXISTS server_manifests_digest ON server_manifests(digest)",
        """CREATE TABLE IF NOT EXISTS server_blobs(
            repo {text} NOT NULL, digest {text} NOT NULL, PRIMARY KEY(repo, digest)){norowid}""",
        "CREATE INDEX IF NOT EXISTS server_blobs_digest ON server_blobs(digest)",
        """CREATE TABLE IF NOT EXISTS server_uploads(
            uuid {text} PRIMARY KEY, repo {text} NOT NULL, path {text} NOT NULL,
            "offset" {int} NOT NULL, started {real} NOT NULL, expires {real} NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS server_referrers(
            repo {text} NOT NULL, subject {text} NOT NULL, digest {text} NOT NULL,
            media_type {text} NOT NULL, size {int} NOT NULL, artifact_type {text},
            annotations {text}, created {real} NOT NULL,
            PRIMARY KEY(repo, subject, digest)){norowid}""",
        """pg:CREATE TABLE IF NOT EXISTS tags(
            name {text} PRIMARY KEY, digest {text} NOT NULL, media_type {text} NOT NULL,
            updated {real} NOT NULL)""",
        "pg:CREATE INDEX IF NOT EXISTS tags_digest ON tags(digest)",
        """pg:CREATE TABLE IF NOT EXISTS images(
            digest {text} PRIMARY KEY, media_type {text} NOT NULL, size {int} NOT NULL,
            created {real} NOT NULL)""",
        """pg:CREATE TABLE IF NOT EXISTS refs(
            parent {text} NOT NULL, child {text} NOT NULL, PRIMARY KEY(parent, child))""",
        "pg:CREATE INDEX IF NOT EXISTS refs_child ON refs(child)",
        """pg:CREATE TABLE IF NOT EXISTS layers(
            digest {text} PRIMARY KEY, diff_id {text} NOT NULL, media_type {text} NOT NULL,
            size {int} NOT NULL)""",
        # A replica's row lives as long as the replica: it holds the advisory lock
        # (LOCK_REPLICA, id) on a connection of its own and beats every few seconds.
        """pg:CREATE TABLE IF NOT EXISTS registry_replicas(
            id BIGSERIAL PRIMARY KEY, name {text} NOT NULL,
            started TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat TIMESTAMPTZ NOT NULL DEFAULT now())""",
        # What a replica is about to reference (server/leases.py): a root for gc while
        # the replica lives and the row is younger than the lease TTL.
        """pg:CREATE TABLE IF NOT EXISTS registry_leases(
            replica BIGINT NOT NULL REFERENCES registry_replicas(id) ON DELETE CASCADE,
            key {text} NOT NULL, created TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY(replica, key))""",
        """pg:CREATE TABLE IF NOT EXISTS registry_settings(
            key {text} PRIMARY KEY, value {text} NOT NULL)""",
    ],
    # 2: upload sessions carry a generation, bumped by every request that moves them:
    #    a replica continues from its in-memory hash only if nobody else has since.
    [
        "ALTER TABLE server_uploads ADD COLUMN gen {int} NOT NULL DEFAULT 0",
    ],
]

VERSION = len(MIGRATIONS)

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS registry_schema(version INTEGER NOT NULL)"


def render(statement: str, dialect: Dialect) -> str | None:
    """``statement`` in ``dialect``; None when it does not apply there."""
    if statement.startswith("pg:"):
        if dialect != "postgresql":
            return None
        statement = statement[3:]
    return statement.format(**_WORDS[dialect])


def pending(current: int, dialect: Dialect) -> list[str]:
    """The statements that take a schema at ``current`` to ``VERSION``."""
    out: list[str] = []
    for steps in MIGRATIONS[current:]:
        out.extend(s for s in (render(t, dialect) for t in steps) if s is not None)
    return out


class _Tx(Protocol):
    def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


def migrate(tx: _Tx, dialect: Dialect) -> int:
    """Bring the schema to ``VERSION`` inside ``tx`` (which holds the backend's
    migration lock); returns the version found.  A newer schema than this lamina knows
    is refused: an older replica must not write rows it does not understand."""
    tx.execute(VERSION_TABLE)
    rows = tx.rows("SELECT version FROM registry_schema")
    current = int(rows[0][0]) if rows else 0
    if current > VERSION:
        raise StoreError(f"the registry metadata has schema version {current}; this lamina "
                         f"knows up to {VERSION}: upgrade lamina")
    for statement in pending(current, dialect):
        tx.execute(statement)
    if not rows:
        tx.execute("INSERT INTO registry_schema VALUES(?)", (VERSION,))
    elif current != VERSION:
        tx.execute("UPDATE registry_schema SET version=?", (VERSION,))
    return current
