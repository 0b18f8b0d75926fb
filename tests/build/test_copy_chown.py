"""``COPY --chown`` owns the directories COPY creates for its destination (#10.17), as
BuildKit does (tonistiigi/fsutil copy.go ``Copy``/``prepareTargetDir`` → mkdir.go
``MkdirAll``, which chowns every directory it makes): the destination directory and the
missing parents; directories that already exist keep their owner."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from lamina_testing import Lamina, need_root

CONTAINERFILE = """\
FROM busybox
RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group
WORKDIR /srv
COPY --chown=app:app dir/ ./dir/
COPY --chown=app:app one.txt /opt/deep/er/
COPY --chown=1234:2345 dir /srv/other
ADD --chown=app one.txt /srv/dir/
COPY dir/ /plain/
"""


@pytest.fixture
def base(lamina: Lamina, seed: Path) -> Lamina:
    lamina.run("import", "busybox", seed / "os")
    return lamina


def _layer_owners(lam: Lamina, ref: str, index: int) -> dict[str, tuple[int, int, int]]:
    """name -> (uid, gid, mode) of every entry of the image's layer ``index``."""
    doc = lam.run("inspect", ref).json()[0]
    digest = doc["Manifest"]["layers"][index]["digest"].split(":", 1)[1]
    with tarfile.open(lam.root / "blobs" / "sha256" / digest, "r:*") as tar:
        return {m.name.rstrip("/"): (m.uid, m.gid, m.mode) for m in tar}


def test_copy_chown_owns_the_directories_it_creates(base: Lamina, tmp_path: Path) -> None:
    need_root()
    ctx = tmp_path / "ctx"
    (ctx / "dir" / "sub").mkdir(parents=True)
    (ctx / "dir" / "a.txt").write_text("a\n")
    (ctx / "dir" / "sub" / "b.txt").write_text("b\n")
    (ctx / "one.txt").write_text("one\n")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    base.run("build", "-t", "chown:1", ctx)
    app = (1000, 1000)
    # COPY dir/ ./dir/ under WORKDIR /srv: /srv is WORKDIR's (root), dir/ COPY's.
    layer = _layer_owners(base, "chown:1", 2)
    assert layer["srv"][:2] == (0, 0)
    assert layer["srv/dir"] == (*app, 0o755)
    assert {n: layer[n][:2] for n in ("srv/dir/a.txt", "srv/dir/sub", "srv/dir/sub/b.txt")} \
        == dict.fromkeys(("srv/dir/a.txt", "srv/dir/sub", "srv/dir/sub/b.txt"), app)
    # A file into a missing directory chain: every directory made gets the owner.
    layer = _layer_owners(base, "chown:1", 3)
    assert {n: layer[n] for n in ("opt", "opt/deep", "opt/deep/er")} \
        == dict.fromkeys(("opt", "opt/deep", "opt/deep/er"), (*app, 0o755))
    assert layer["opt/deep/er/one.txt"][:2] == app
    # A directory source to a missing destination without a slash: its contents land
    # in the new directory, which is the --chown owner's; the existing /srv stays root's.
    layer = _layer_owners(base, "chown:1", 4)
    assert layer["srv/other"][:2] == (1234, 2345) and layer["srv"][:2] == (0, 0)
    # ADD into an existing directory leaves that directory's owner alone.
    layer = _layer_owners(base, "chown:1", 5)
    assert layer["srv/dir"][:2] == app and layer["srv/dir/one.txt"][:2] == (1000, 1000)
    # Without --chown, the made directory is root's.
    assert _layer_owners(base, "chown:1", 6)["plain"] == (0, 0, 0o755)
