"""A real PostgreSQL 15 (Debian's ``postgresql``) for the tests: one cluster per test
session (per pytest-xdist worker), in a temp dir, on 127.0.0.1 and a free port, run as the
unprivileged ``postgres`` user (the tests run as root; PostgreSQL refuses to run as root),
stopped at the end of the session — at interpreter exit, should the run be interrupted, and
by a watchdog process once the test process is gone, should it be killed.

Each test gets a database of its own (``Postgres.new_database``).  ``stop``/``start``
take the server away and bring it back on the same port (the fault tests).

Use it from a conftest (or a test module) as::

    from pg_fixture import pg_server, pg_url   # noqa: F401 - fixtures
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("LAMINA_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing(msg: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


class Postgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lamina-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_port()
        self._names = itertools.count(1)
        self.running = False
        pw = pwd.getpwnam(PG_USER)
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust",
                  "--locale=C.UTF-8", "--encoding=UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed:\n{proc.stdout}\n{proc.stderr}\n"
                               f"{self.log.read_text()[-2000:] if self.log.exists() else ''}")

    def start(self) -> None:
        # fsync off: a test cluster needs no durability, and the machine is shared.
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200")
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "30", "-o", opts)
        self.running = True

    def first_start(self) -> None:
        """Start on a free port; another port if someone took that one meanwhile."""
        for attempt in range(3):
            try:
                self.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                self.port = _free_port()
        self._watch()

    def _watch(self) -> None:
        """A process of its own that stops the server once this one is gone (SIGKILL)."""
        ctl = " ".join(["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else [])
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
                  f"{ctl} {PG_BIN / 'pg_ctl'} stop -D {self.data} -m immediate; "
                  f"rm -rf {self.dir}")
        subprocess.Popen(["sh", "-c", script], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30")
            self.running = False

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        _missing(f"PostgreSQL is not installed ({PG_BIN}/initdb; apt-get install postgresql)")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        _missing(f"no {PG_USER} user to run PostgreSQL as (apt-get install postgresql)")
    pg = Postgres()
    atexit.register(pg.close)       # an interrupted run stops it too
    try:
        pg.first_start()
        yield pg
    finally:
        pg.close()
        atexit.unregister(pg.close)


@pytest.fixture
def pg_url(pg_server: Postgres) -> str:
    """A fresh, empty database on the session's cluster."""
    if not pg_server.running:
        pg_server.start()
    return pg_server.new_database()
