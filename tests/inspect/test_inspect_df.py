"""lamina df: the store's space, per image shared and unique sizes."""

from __future__ import annotations

import json
from pathlib import Path

from inspect_helpers import KnownImages

from lamina_testing import Lamina


def _manifest(lam: Lamina, ref: str) -> dict:
    (doc,) = lam.run("inspect", ref).json()
    return doc["Manifest"]


def test_df_known_images(known: KnownImages) -> None:
    lam = known.lamina
    ma, mb = _manifest(lam, "test/a"), _manifest(lam, "test/b")
    la = [x["size"] for x in ma["layers"]]
    lb = [x["size"] for x in mb["layers"]]
    assert la[:2] == lb[:2]                       # the two shared layers
    size_a = ma["config"]["size"] + sum(la)
    size_b = mb["config"]["size"] + sum(lb)
    shared = la[0] + la[1]
    blobs_dir = lam.root / "blobs" / "sha256"
    disk = sum(p.stat().st_size for p in blobs_dir.iterdir())
    manifests = sum((blobs_dir / r["digest"].split(":")[1]).stat().st_size
                    for r in lam.run("images", "--json").json())

    usage = lam.run("df", "--json").json()
    summary = {r["type"]: r for r in usage["summary"]}
    assert summary["Images"] == {"type": "Images", "total": 2, "active": 2,
                                 "size": disk, "reclaimable": 0}
    # 2 manifests + 2 configs + 5 distinct layers
    assert summary["Blobs"] == {"type": "Blobs", "total": 9, "active": 9, "size": disk,
                                "reclaimable": 0}
    assert disk == size_a + size_b - shared + manifests
    assert summary["Snapshots"]["total"] == 0
    assert summary["Build cache"]["total"] == 0
    rows = {r["repository"]: r for r in usage["images"]}
    assert (rows["test/a"]["size"], rows["test/a"]["shared_size"],
            rows["test/a"]["unique_size"]) == (size_a, shared, size_a - shared)
    assert (rows["test/b"]["size"], rows["test/b"]["shared_size"],
            rows["test/b"]["unique_size"]) == (size_b, shared, size_b - shared)
    assert rows["test/a"]["layers"] == 4 and rows["test/b"]["layers"] == 3

    text = lam.run("df", "-v").out
    assert "Images space usage:" in text and "SHARED SIZE   UNIQUE SIZE" in text


def test_df_build_cache_and_reclaimable(lamina: Lamina, tmp_path: Path) -> None:
    """A stage no image uses leaves a cache-only layer (gc --cache reclaims it); a re-used
    name leaves an untagged image (rmi reclaims it); the store's own figures agree."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "junk.txt").write_bytes(b"j" * 3000)
    (ctx / "page.txt").write_bytes(b"p" * 100)
    (ctx / "Containerfile").write_text(
        "FROM scratch AS junk\nCOPY junk.txt /junk.txt\n"
        "FROM scratch\nCOPY --from=junk /junk.txt /j.txt\nCOPY page.txt /page.txt\n")
    lamina.run("build", "-t", "web", ctx)
    first = lamina.run("images", "--json").json()[0]
    (ctx / "page.txt").write_bytes(b"q" * 100)
    lamina.run("build", "-t", "web", ctx)      # web moves on; the first image is <none>
    usage = lamina.run("df", "--json").json()
    summary = {r["type"]: r for r in usage["summary"]}
    gc = lamina.run("gc", "--dry-run", "--json").json()
    assert summary["Blobs"]["reclaimable"] == gc["bytes_freed"]
    assert gc["blobs_removed"] == []   # cached layers are roots (#10.2) ...
    gc = lamina.run("gc", "--dry-run", "--cache", "--json").json()   # ... until --cache
    cache = usage["build_cache"]
    assert sorted((c["created_by"], c["in_use"]) for c in cache) == [
        ("COPY --from=junk /junk.txt /j.txt", True), ("COPY junk.txt /junk.txt", False),
        ("COPY page.txt /page.txt", True), ("COPY page.txt /page.txt", True)]
    junk = next(c for c in cache if not c["in_use"])
    assert summary["Build cache"]["reclaimable"] == junk["size"]
    assert gc["blobs_removed"] == [junk["layer"]]
    rows = usage["images"]
    assert [(r["repository"], r["tag"]) for r in rows] == [("<none>", "<none>"),
                                                            ("web", "latest")]
    old = rows[0]
    copied = next(c for c in cache if c["created_by"].startswith("COPY --from"))
    # the first image shares the COPY --from layer with the new one
    assert old["id"] == first["id"] and old["shared_size"] == copied["size"]
    # what only the untagged image reaches: its manifest, config and page layer
    assert summary["Images"]["total"] == 2 and summary["Images"]["active"] == 1
    blobs = lamina.root / "blobs" / "sha256"
    manifest = (blobs / old["digest"].split(":")[1]).stat().st_size
    assert summary["Images"]["reclaimable"] == old["unique_size"] + manifest
    assert json.loads((blobs / old["digest"].split(":")[1]).read_bytes())["layers"]
