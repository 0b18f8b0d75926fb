"""#14.4: images deeper than one overlay mount allows run and build with the overlay
snapshotter: the bottom layers are merged into one cached snapshot, shared by every
image with that prefix, kept by gc while an image needs it and removed after.

The 500-layer image is made in seconds: the seed's busybox layer, then 499 small layer
tars written straight into the store (no RUN steps)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from run_helpers import entry, make_tar, store_image

from lamina.digest import Digest
from lamina.image.config import chain_ids
from lamina.run.snapshots import MAX_LOWERS, merge_point, merged_id
from lamina.store.store import Store
from lamina_testing import Lamina, need_root

DIR = tarfile.DIRTYPE
LOW, GONE_LOW, GONE_HIGH, HIGH = 5, 10, 450, 500   # layer numbers (1 is busybox)


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def _layer_tar(n: int) -> bytes:
    """Layer n (2..): /fileN holding "N"; layer LOW adds /low-gone and /opq/old, layer
    GONE_LOW deletes /mid-gone (added by layer 3), layer GONE_HIGH deletes /low-gone
    (across the merge point) and makes /opq opaque with /opq/new."""
    entries = [entry(f"file{n}", data=f"{n}\n".encode())]
    if n == 3:
        entries.append(entry("mid-gone", data=b"x"))
    if n == LOW:
        entries += [entry("low-gone", data=b"low"), entry("opq", DIR, mode=0o755),
                    entry("opq/old", data=b"old")]
    if n == GONE_LOW:
        entries.append(entry(".wh.mid-gone"))
    if n == GONE_HIGH:
        entries += [entry(".wh.low-gone"), entry("opq", DIR, mode=0o755),
                    entry("opq/.wh..wh..opq"), entry("opq/new", data=b"new")]
    return make_tar(entries)


def _base_tar(root: Path) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")
    return raw.getvalue()


def _deep_image(store: Store, base: bytes, tag: str, top: list[bytes]) -> list[Digest]:
    """Record ``tag``: the ``base`` layer, then layers 2..HIGH, then ``top``; its
    diff_ids."""
    tars = [base] + [_layer_tar(n) for n in range(2, HIGH + 1)] + top
    store_image(store, tag, tars)
    return [Digest.from_bytes(t) for t in tars]


def _snapshots(lam: Lamina) -> tuple[list[str], list[str]]:
    """(merged, per-layer) snapshot keys of the store."""
    with Store(lam.root) as store:
        rows = store.meta.snapshots()
    return ([r[0] for r in rows if r[2].startswith("merged:")],
            [r[0] for r in rows if not r[2].startswith("merged:")])


def test_merge_point() -> None:
    assert merge_point(MAX_LOWERS) == 0
    assert merge_point(MAX_LOWERS + 1) == 100
    assert merge_point(300) == 200 and merge_point(500) == merge_point(501) == 400
    for n in range(MAX_LOWERS + 1, 2000):
        cut = merge_point(n)
        assert cut % 100 == 0 and 1 + n - cut <= MAX_LOWERS < 1 + n - (cut - 100)


def test_run_and_build_on_500_layers(fresh: Lamina, seed: Path, tmp_path: Path) -> None:
    base = _base_tar(seed / "os")
    with Store(fresh.root) as store:
        deep = _deep_image(store, base, "deep:1", [])
        _deep_image(store, base, "deep:2", [make_tar([entry("top", data=b"t")])])
    assert len(deep) == 500 and merge_point(500) == merge_point(501) == 400
    key = str(merged_id(chain_ids(deep)[399]))

    def run(ref: str, *cmd: str) -> str:
        return fresh.run("run", "--snapshotter", "overlay", ref, *cmd).out

    # files of the bottom layer (busybox's, merged), a low layer and the top one
    assert run("deep:1", "cat", "/etc/hostname", f"/file{LOW}", f"/file{HIGH}") == \
        f"lamina-seed\n{LOW}\n{HIGH}\n"
    listing = run("deep:1", "ls", "/", "/opq").split()
    assert "low-gone" not in listing and "mid-gone" not in listing   # whiteouts honoured
    assert "new" in listing and "old" not in listing                  # opaque dir too
    assert "file2" in listing and "file500" in listing
    merged, layers = _snapshots(fresh)
    assert merged == [key] and len(layers) == 100     # the merge, then the top 100

    # the merged snapshot's files come from the store's file pool like any snapshot's:
    # the base image alone, run, holds the same busybox inode
    with Store(fresh.root) as store:
        store_image(store, "base", [base])
    assert run("base", "cat", "/etc/hostname") == "lamina-seed\n"
    snaps = fresh.root / "snapshots"
    alone = (snaps / deep[0].encoded / "bin" / "busybox").stat()
    inside = (snaps / key.removeprefix("sha256:") / "bin" / "busybox").stat()
    assert (alone.st_ino, alone.st_dev) == (inside.st_ino, inside.st_dev)
    assert alone.st_nlink == 3   # the two snapshots and the pool entry

    # a second image with the same 400-layer prefix reuses the merged snapshot
    assert run("deep:2", "cat", "/top", f"/file{HIGH}") == f"t{HIGH}\n"
    merged, layers = _snapshots(fresh)
    assert merged == [key] and len(layers) == 102     # the top one of deep:2, and base's
    usage = fresh.run("df", "--json").json()
    [row] = [r for r in usage["summary"] if r["type"] == "Snapshots"]
    assert row["total"] == 103

    # a RUN step of a build over it: reads through the merged prefix, deletes from it
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        f"FROM deep:1\nRUN cat /file2 /file{HIGH} > /both && rm /file250 /opq/new\n")
    fresh.run("build", "--snapshotter", "overlay", "-t", "deep:built", ctx)
    assert run("deep:built", "cat", "/both") == f"2\n{HIGH}\n"
    after = run("deep:built", "ls", "/", "/opq").split()
    assert "file250" not in after and "file249" in after and "new" not in after
    fresh.assert_consistent()

    # gc keeps the merged snapshot while an image needs it, and removes it after
    fresh.run("rmi", "deep:1", "deep:built")
    fresh.run("gc")
    assert _snapshots(fresh)[0] == [key]
    fresh.run("rmi", "deep:2")
    fresh.run("gc")
    assert _snapshots(fresh)[0] == []
    assert not (fresh.root / "snapshots" / key.removeprefix("sha256:")).exists()
    fresh.assert_consistent()
