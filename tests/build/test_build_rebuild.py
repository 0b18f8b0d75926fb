"""A fully cached rebuild is the same image (#10.13): same config bytes, same image ID,
no ``<none>`` left behind, as with Docker/BuildKit — without SOURCE_DATE_EPOCH."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lamina_testing import Lamina

# Config-only steps before the first layer, between layers and after the last one.
CONTAINERFILE = """\
FROM busybox
LABEL stage=before
ENV A=1
COPY a.txt /a.txt
ENV B=2
RUN echo built > /built
LABEL stage=after
CMD ["cat", "/a.txt"]
"""
NO_EPOCH = {"SOURCE_DATE_EPOCH": ""}


@pytest.fixture
def base(lamina: Lamina, seed: Path) -> Lamina:
    lamina.run("import", "busybox", seed / "os")
    return lamina


def _build(lam: Lamina, ctx: Path, tag: str) -> dict:
    # Each build starts in a second of its own: without the fix, "now" differs.
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)
    return lam.run("build", "--json", "-t", tag, ctx, env=NO_EPOCH).json()


def _inspect(lam: Lamina, ref: str) -> dict:
    return lam.run("inspect", ref).json()[0]


@pytest.mark.parametrize("text", [CONTAINERFILE, "FROM busybox\nENV A=1\nCMD [\"sh\"]\n"],
                         ids=["layers", "config-only"])
def test_a_fully_cached_rebuild_gives_the_same_image_id(base: Lamina, tmp_path: Path,
                                                        text: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(text)
    (ctx / "a.txt").write_text("A\n")
    first = _build(base, ctx, "re:1")
    again = _build(base, ctx, "re:1")
    assert again["new_layers"] == 0
    assert (again["id"], again["digest"]) == (first["id"], first["digest"])
    listing = base.run("images").out
    assert "<none>" not in listing, listing
    doc = _inspect(base, "re:1")
    assert all(h.get("created") for h in doc["History"]), doc["History"]
    assert doc["Created"] == doc["History"][-1]["created"]


def test_a_changed_step_gives_a_new_image_id(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    (ctx / "a.txt").write_text("A\n")
    first = _build(base, ctx, "re:1")
    (ctx / "Containerfile").write_text(CONTAINERFILE.replace("stage=after", "stage=later"))
    label = _build(base, ctx, "re:2")
    assert label["new_layers"] == 0 and label["id"] != first["id"]
    (ctx / "a.txt").write_text("A2\n")
    copy = _build(base, ctx, "re:3")
    assert copy["new_layers"] == 2 and copy["id"] not in (first["id"], label["id"])
