"""COPY/ADD flags of the BuildKit frontend: --link, --parents, --exclude, --chmod
(Dockerfile reference, "COPY"; BuildKit dockerfile2llb/convert_copy.go, fsutil copy)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_heredocs import layer_entries

from lamina_testing import Lamina


@pytest.fixture
def bases(lamina: Lamina, seed: Path, tmp_path: Path) -> Lamina:
    """base:v1 is the busybox OS; base:v2 adds a layer with /opt (0700) and /etc/v2."""
    extra = tmp_path / "v2"  # a snapshot of the whole root, as import takes them
    shutil.copytree(seed / "os", extra, symlinks=True)
    (extra / "opt").mkdir(exist_ok=True)
    (extra / "etc" / "v2").write_text("v2\n")
    os.chmod(extra / "opt", 0o700)
    lamina.run("import", "base:v1", seed / "os")
    lamina.run("import", "base:v2", seed / "os", extra)
    return lamina


LINK = """\
ARG BASE=base:v1
FROM $BASE
RUN echo "built on $(cat /etc/v2 2>/dev/null || echo v1)" > /built
COPY --link app/ /opt/app/
COPY --link --chown=5:6 conf.txt /etc/conf.txt
RUN cat /opt/app/main.sh /etc/conf.txt > /both
"""


def test_copy_link_layer_survives_a_base_change(bases: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "main.sh").write_text("echo main\n")
    (ctx / "conf.txt").write_text("conf\n")
    (ctx / "Containerfile").write_text(LINK)
    v1 = bases.run("build", "--json", "-t", "l:1", ctx).json()
    assert v1["new_layers"] == 4
    v2 = bases.run("build", "--json", "--build-arg", "BASE=base:v2", "-t", "l:2", ctx).json()
    # The base changed: the RUNs are made again, both --link layers come from the cache.
    assert (v2["new_layers"], v2["cached_layers"]) == (2, 2)
    assert v1["layers"][2:4] == v2["layers"][3:5]
    # Made again without the cache, over v2, the linked layers are the same bytes.
    again = bases.run("build", "--json", "--no-cache", "--build-arg", "BASE=base:v2",
                      ctx).json()
    assert again["layers"] == v2["layers"]
    # The layer holds only what was copied, its parents made with default metadata
    # (0755 root), not v2's /opt (0700): it never saw the layers below.
    link_layer = layer_entries(bases, "l:2")[3]
    assert sorted(link_layer) == ["opt", "opt/app", "opt/app/main.sh"]
    assert link_layer["opt"][:3] == (0o755, 0, 0)
    assert layer_entries(bases, "l:2")[4]["etc/conf.txt"][1:3] == (5, 6)
    bases.run("unpack", "l:2", tmp_path / "r")
    assert (tmp_path / "r/both").read_text() == "echo main\nconf\n"
    assert (tmp_path / "r/built").read_text() == "built on v2\n"
    # Without --link the same COPY is made again over the new base.
    (ctx / "Containerfile").write_text(LINK.replace("--link ", ""))
    plain = bases.run("build", "--json", "--build-arg", "BASE=base:v1", ctx).json()
    plain2 = bases.run("build", "--json", "--build-arg", "BASE=base:v2", ctx).json()
    assert plain["new_layers"] == plain2["new_layers"] == 3  # the RUN above is cached
    bases.assert_consistent()


def test_copy_link_by_user_name_fails_as_in_buildkit(bases: Lamina, tmp_path: Path) -> None:
    # The copy happens in an empty filesystem: there is no /etc/passwd to look names up.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("f\n")
    (ctx / "Containerfile").write_text("FROM base:v1\nCOPY --link --chown=root f /f\n")
    res = bases.fail("build", ctx)
    assert res.err.strip() == ("lamina: Containerfile:2: COPY: unable to find user root: no "
                               "matching entries in passwd file")


PARENTS = """\
FROM base:v1
COPY --parents a/b/c.txt x/*/z.txt /dst/
COPY --parents ./a/./b/d.md /piv/
COPY --exclude=*.md --exclude=sub/*.log dir /ex/
ADD --chmod=640 one.txt /m/
COPY --chmod=0751 dir/sub /mm
"""


def test_parents_exclude_chmod(bases: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    for name, text in {"a/b/c.txt": "c", "a/b/d.md": "d", "x/y/z.txt": "z", "x/w/q.txt": "q",
                       "dir/keep.txt": "k", "dir/drop.md": "dm", "dir/sub/keep.md": "km",
                       "dir/sub/drop.log": "dl", "dir/sub/keep.txt": "kt",
                       "one.txt": "one"}.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    os.chmod(ctx / "a", 0o750)
    (ctx / "Containerfile").write_text(PARENTS)
    first = bases.run("build", "--json", "-t", "p", ctx).json()
    layers = layer_entries(bases, "p")[1:]
    # --parents: the path below the context root is kept, parents copied from the
    # source's (a is 0750 there); /./ is the pivot: only what follows it is kept.
    assert sorted(layers[0]) == ["dst", "dst/a", "dst/a/b", "dst/a/b/c.txt", "dst/x",
                                 "dst/x/y", "dst/x/y/z.txt"]
    assert layers[0]["dst/a"][0] == 0o750
    assert sorted(layers[1]) == ["piv", "piv/b", "piv/b/d.md"]
    # --exclude: relative to the source, .dockerignore syntax (* stays in one directory).
    assert sorted(layers[2]) == ["ex", "ex/keep.txt", "ex/sub", "ex/sub/keep.md",
                                 "ex/sub/keep.txt"]
    # --chmod on ADD, and on everything COPY copies (directories too).
    assert layers[3]["m/one.txt"][0] == 0o640
    assert {n: v[0] for n, v in layers[4].items()} == {
        "mm": 0o751, "mm/drop.log": 0o751, "mm/keep.md": 0o751, "mm/keep.txt": 0o751}
    # An excluded file is not in the cache key; a copied one is.
    (ctx / "dir/drop.md").write_text("changed")
    assert bases.run("build", "--json", ctx).json()["cached_layers"] == 5
    (ctx / "dir/keep.txt").write_text("changed")
    assert bases.run("build", "--json", ctx).json()["new_layers"] == 3
    assert first["digest"] != bases.run("build", "--json", ctx).json()["digest"]
