"""Container records: the ``containers`` table of the store's metadata.

lamina has no daemon (as Podman has none): a container is a process some lamina started,
and its record is what lets every later lamina find it — ``ps``, ``stop``, ``logs``,
``exec``, ``commit``, ``rm`` — after the one that started it has exited.  Podman keeps
the same facts in its database (libpod's ``ContainerState``); Docker's daemon in memory
and ``config.v2.json``.

A record's ``state``: ``created`` (made, its process not started yet), ``running``
(``pid`` is the command's host pid, ``pid_start`` its start time in clock ticks, so a
reused pid is never mistaken for it), ``exited`` (``exit_code`` None: unknown, because
the process died while nothing watched it).  ``roots`` are the store nodes (blobs,
``snapshot:<chain id>``) the container stands on: gc keeps them until ``rm``.

The directory of a container, ``containers/<id>/`` in the store, holds its root
filesystem and its log (run/containers.py); this module holds only the rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lamina.errors import InvalidInput, NotFound
from lamina.store.meta import Metadata

_COLUMNS = ("id, name, image, created, spec, roots, state, pid, pid_start, started, "
            "finished, exit_code, error, health")


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    name: str
    image: str                 # as the user named it
    created: float
    spec: dict[str, Any]       # what run/containers.py needs to run, exec and commit it
    roots: list[str] = field(default_factory=list)
    state: str = "created"
    pid: int | None = None
    pid_start: int | None = None
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    error: str = ""
    health: dict[str, Any] = field(default_factory=dict)   # Docker's State.Health

    @property
    def short_id(self) -> str:
        return self.id[:12]


def _record(row: Sequence[object]) -> ContainerRecord:
    (cid, name, image, created, spec, roots, state, pid, pid_start, started, finished,
     code, error, health) = row
    return ContainerRecord(
        str(cid), str(name), str(image), float(created),  # type: ignore[arg-type]
        json.loads(str(spec)), json.loads(str(roots)), str(state),
        None if pid is None else int(pid),  # type: ignore[call-overload]
        None if pid_start is None else int(pid_start),  # type: ignore[call-overload]
        None if started is None else float(started),  # type: ignore[arg-type]
        None if finished is None else float(finished),  # type: ignore[arg-type]
        None if code is None else int(code),  # type: ignore[call-overload]
        str(error), json.loads(str(health)) if health else {})


class Containers:
    """The container rows of one store's metadata."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta

    def add(self, rec: ContainerRecord) -> None:
        """Record a new container; a name in use is one clear error (Docker's words)."""
        with self.meta.transaction() as db:
            row = db.execute("SELECT id FROM containers WHERE name=?", (rec.name,)).fetchone()
            if row is not None:
                raise InvalidInput(f'the container name "{rec.name}" is already in use by '
                                   f"container {str(row[0])[:12]}: remove it (lamina rm) "
                                   "or choose another --name")
            db.execute(f"INSERT INTO containers({_COLUMNS}) "
                       "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (rec.id, rec.name, rec.image, rec.created, json.dumps(rec.spec),
                        json.dumps(rec.roots), rec.state, rec.pid, rec.pid_start,
                        rec.started, rec.finished, rec.exit_code, rec.error,
                        json.dumps(rec.health) if rec.health else ""))

    def by_name(self, name: str) -> ContainerRecord | None:
        rows = self.meta.query(f"SELECT {_COLUMNS} FROM containers WHERE name=?", (name,))
        return _record(rows[0]) if rows else None

    def get(self, cid: str) -> ContainerRecord | None:
        rows = self.meta.query(f"SELECT {_COLUMNS} FROM containers WHERE id=?", (cid,))
        return _record(rows[0]) if rows else None

    def find(self, text: str) -> ContainerRecord:
        """A container by name, full id or unique id prefix (Docker's lookup order)."""
        rec = self.by_name(text.removeprefix("/"))
        if rec is not None:
            return rec
        if text and all(c in "0123456789abcdef" for c in text):
            rows = self.meta.query(f"SELECT {_COLUMNS} FROM containers WHERE id LIKE ?",
                                   (text + "%",))
            if len(rows) == 1:
                return _record(rows[0])
            if len(rows) > 1:
                raise InvalidInput(f"container id prefix {text} is ambiguous: "
                                   f"{len(rows)} containers match")
        raise NotFound(f"no such container: {text}")

    def all(self) -> list[ContainerRecord]:
        rows = self.meta.query(f"SELECT {_COLUMNS} FROM containers ORDER BY created DESC")
        return [_record(r) for r in rows]

    def started(self, cid: str, pid: int, pid_start: int) -> None:
        with self.meta.transaction() as db:
            db.execute("UPDATE containers SET state='running', pid=?, pid_start=?, started=?, "
                       "finished=NULL, exit_code=NULL, error='' WHERE id=?",
                       (pid, pid_start, time.time(), cid))

    def exited(self, cid: str, exit_code: int | None, error: str = "",
               only_if_running: bool = False) -> bool:
        """Record the end of the container's process (``exit_code`` None: unknown).
        ``only_if_running``: leave a record another process already closed alone."""
        with self.meta.transaction() as db:
            sql = ("UPDATE containers SET state='exited', exit_code=?, error=?, finished=? "
                   "WHERE id=?")
            if only_if_running:
                sql += " AND state IN ('running', 'created')"
            return db.execute(sql, (exit_code, error, time.time(), cid)).rowcount > 0

    def set_health(self, cid: str, health: dict[str, Any]) -> None:
        with self.meta.transaction() as db:
            db.execute("UPDATE containers SET health=? WHERE id=?", (json.dumps(health), cid))

    def delete(self, cid: str) -> bool:
        with self.meta.transaction() as db:
            return db.execute("DELETE FROM containers WHERE id=?", (cid,)).rowcount > 0


def container_roots(db: sqlite3.Connection) -> set[str]:
    """Every node a container keeps (for gc's roots)."""
    roots: set[str] = set()
    for (raw,) in db.execute("SELECT roots FROM containers"):
        roots.update(str(k) for k in json.loads(str(raw)))
    return roots
