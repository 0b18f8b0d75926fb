"""#11.4: snapshots keep one copy of each identical regular file (content *and* metadata)
through the store's file pool; nothing ever writes through a shared inode, gc and df
understand the pool, and ``lamina unpack`` never links into the store."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from run_helpers import assert_no_leftovers, entry, make_tar, store_image

from lamina.run.snapshots import Snapshotter
from lamina.store import pool
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import resolve_image
from lamina_testing import Lamina, need_root, tree_listing

DIR, LNK = tarfile.DIRTYPE, tarfile.LNKTYPE
BIG = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(40_000))  # 1.28 MB
SMALL = b"small file, hashed before it is written\n" * 20
MTIME = 1_600_000_000


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def _file(name: str, data: bytes, **meta: Any) -> tuple[tarfile.TarInfo, bytes]:
    xattrs = meta.pop("xattrs", None)
    info, payload = entry(name, data=data, **{"mode": 0o644, "mtime": MTIME, **meta})
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return info, payload


def _snapshots(store: Store, ref: str, share: bool = True) -> list[Path]:
    source = StoreTransport(store)
    image = resolve_image(source, source.resolve(ref))
    return Snapshotter(store, share_files=share).ensure(
        source, image.manifest.layers, image.config.diff_ids, owner=image.digest)


def _pool_inodes(root: Path) -> dict[tuple[int, int], pool.PoolEntry]:
    return {e.inode: e for e in pool.entries(root)}


def _inode(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def _two_images(store: Store, zstd_b: bool = False) -> tuple[Path, Path]:
    """pool/a and pool/b: one layer each, different layers holding the same files."""
    common = [entry("data/", DIR, mode=0o755),
              _file("data/big", BIG, mode=0o755, uid=1000, gid=1000),
              _file("data/small", SMALL)]
    store_image(store, "pool/a", [make_tar([*common, _file("a", b"only in a")])])
    store_image(store, "pool/b", [make_tar([*common, _file("b", b"only in b")])], zstd=zstd_b)
    (a,) = _snapshots(store, "pool/a")
    (b,) = _snapshots(store, "pool/b")
    return a, b


def test_identical_files_of_different_layers_share_one_inode(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store(root) as store:
        # Different formats too (gzip and zstd): the pool keys files, not layers.
        a, b = _two_images(store, zstd_b=True)
        assert a != b
        entries = _pool_inodes(root)
        for name, data in (("data/big", BIG), ("data/small", SMALL)):
            assert _inode(a / name) == _inode(b / name), name
            assert _inode(a / name) in entries   # the pool's own inode
            assert os.lstat(b / name).st_nlink == 3   # the pool and the two snapshots
            assert (a / name).read_bytes() == data
        big = os.lstat(b / "data/big")
        assert (stat.S_IMODE(big.st_mode), big.st_uid, big.st_gid, big.st_mtime_ns) == (
            0o755, 1000, 1000, MTIME * 10**9)
        # A file only one snapshot has is in the pool too (the next layer may share it).
        assert os.lstat(a / "a").st_nlink == 2 and _inode(a / "a") != _inode(b / "b")
        assert sorted(e.size for e in entries.values()) == sorted(
            [len(BIG), len(SMALL), len(b"only in a"), len(b"only in b")])
    assert_no_leftovers(root)


VARIANTS: dict[str, dict[str, Any]] = {
    "mode": {"mode": 0o600},
    "owner": {"uid": 33},
    "group": {"gid": 33},
    "mtime": {"mtime": MTIME + 1},
    "xattr": {"xattrs": {"user.note": "x"}},
}


@pytest.mark.parametrize("size", [len(SMALL), len(BIG)], ids=["small", "big"])
@pytest.mark.parametrize("variant", [*VARIANTS, "content"])
def test_files_that_differ_in_any_metadata_do_not_share(tmp_path: Path, variant: str,
                                                        size: int) -> None:
    data = (SMALL if size == len(SMALL) else BIG)
    other = data[:-1] + b"!" if variant == "content" else data
    meta = VARIANTS.get(variant, {})
    root = tmp_path / "store"
    with Store(root) as store:
        store_image(store, "pool/one", [make_tar([_file("f", data), _file("one", b"1")])])
        store_image(store, "pool/two", [make_tar([_file("f", other, **meta),
                                                  _file("two", b"2")])])
        (one,) = _snapshots(store, "pool/one")
        (two,) = _snapshots(store, "pool/two")
        assert _inode(one / "f") != _inode(two / "f")
        assert os.lstat(one / "f").st_nlink == os.lstat(two / "f").st_nlink == 2
        st = os.lstat(two / "f")
        assert stat.S_IMODE(st.st_mode) == meta.get("mode", 0o644)
        assert (st.st_uid, st.st_gid) == (meta.get("uid", 0), meta.get("gid", 0))
        assert st.st_mtime_ns == meta.get("mtime", MTIME) * 10**9
        assert os.listxattr(two / "f") == list(meta.get("xattrs", {}))
        assert (two / "f").read_bytes() == other
    assert_no_leftovers(root)


def test_a_layers_own_hard_links_stay_its_own(tmp_path: Path) -> None:
    """Names hard-linked inside a layer share an inode with each other only: a group
    written by the layer is never pooled, and a pooled file a later link names is made
    private again first (with all its metadata)."""
    xattr = {"user.kept": "yes"}
    root = tmp_path / "store"
    with Store(root) as store:
        store_image(store, "pool/first", [make_tar([
            _file("x", SMALL, mode=0o4755, uid=7, xattrs=xattr), _file("y", BIG)])])
        store_image(store, "pool/links", [make_tar([
            _file("a", SMALL, mode=0o4755, uid=7, xattrs=xattr),  # in the pool: linked
            entry("b", LNK, linkname="a"),                        # ... so a goes private
            _file("c", BIG), entry("d", LNK, linkname="c"),       # written, linked: private
            _file("e", SMALL, mode=0o4755, uid=7, xattrs=xattr),  # pooled
        ])])
        (first,) = _snapshots(store, "pool/first")
        (snap,) = _snapshots(store, "pool/links")
        entries = _pool_inodes(root)
        assert _inode(snap / "a") == _inode(snap / "b") and os.lstat(snap / "a").st_nlink == 2
        assert _inode(snap / "c") == _inode(snap / "d") and os.lstat(snap / "c").st_nlink == 2
        assert _inode(snap / "a") not in entries and _inode(snap / "c") not in entries
        assert _inode(snap / "e") == _inode(first / "x") in entries
        assert entries[_inode(first / "x")].links == 3      # pool, x, e: not a or b
        assert entries[_inode(first / "y")].links == 2      # pool, y: not c or d
        a, x = os.lstat(snap / "a"), os.lstat(first / "x")
        assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns, a.st_size) == (
            x.st_mode, x.st_uid, x.st_gid, x.st_mtime_ns, x.st_size)
        assert os.getxattr(snap / "a", "user.kept") == b"yes"
        assert (snap / "a").read_bytes() == SMALL and (snap / "d").read_bytes() == BIG
        assert not [n for n in os.listdir(snap) if n.startswith(".")]  # no temporary names
    assert_no_leftovers(root)


def test_files_stay_private_where_links_run_out(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """EMLINK (ext4 allows 65000 links) or EXDEV: the file is a copy of its own."""
    real_link = os.link
    pool_dir = str(tmp_path / "store" / "pool") + "/"

    def full(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        if str(src).startswith(pool_dir) and os.path.exists(src):
            raise OSError(errno.EMLINK, "Too many links", src)
        real_link(src, dst, *args, **kw)

    root = tmp_path / "store"
    with Store(root) as store:
        store_image(store, "pool/a", [make_tar([_file("big", BIG), _file("small", SMALL)])])
        (a,) = _snapshots(store, "pool/a")
        monkeypatch.setattr(os, "link", full)
        store_image(store, "pool/b", [make_tar([_file("big", BIG), _file("small", SMALL),
                                                _file("b", b"b")])])
        (b,) = _snapshots(store, "pool/b")
        for name, data in (("big", BIG), ("small", SMALL)):
            assert _inode(a / name) != _inode(b / name)
            assert os.lstat(b / name).st_nlink == 1 and (b / name).read_bytes() == data
        assert not [n for n in os.listdir(b) if n.startswith(".")]
    assert_no_leftovers(root)


def test_gc_after_rmi_frees_what_only_the_removed_image_had(tmp_path: Path) -> None:
    lam = Lamina(tmp_path / "store", tmp_path)
    with Store(lam.root) as store:
        a, b = _two_images(store)
        only_a = _inode(a / "a")
        shared = _inode(b / "data/big")
    lam.run("rmi", "pool/a")
    dry = lam.run("gc", "--dry-run", "--json").json()
    assert dry["pool_removed"] == 1 and len(dry["snapshots_removed"]) == 1
    assert only_a in _pool_inodes(lam.root)          # a dry run removes nothing
    report = lam.run("gc", "--json").json()
    assert report["pool_removed"] == 1 and report["bytes_freed"] == dry["bytes_freed"]
    assert report["bytes_freed"] >= len(b"only in a")
    entries = _pool_inodes(lam.root)
    assert only_a not in entries and entries[shared].links == 2   # the pool and b
    assert (b / "data/big").read_bytes() == BIG and not a.exists()
    assert lam.run("gc", "--json").json()["pool_removed"] == 0
    lam.run("rmi", "pool/b")
    assert lam.run("gc", "--json").json()["pool_removed"] == 3
    assert list(pool.entries(lam.root)) == []
    lam.assert_consistent()


def test_df_shows_what_the_pool_saves(tmp_path: Path) -> None:
    lam = Lamina(tmp_path / "store", tmp_path)
    with Store(lam.root) as store:
        _two_images(store)
    usage = lam.run("df", "--json").json()
    space = usage["snapshot_space"]
    assert space["saved"] == len(BIG) + len(SMALL)       # one copy each instead of two
    assert space["physical"] == space["logical"] - space["saved"] < space["logical"]
    row = {r["type"]: r for r in usage["summary"]}["Snapshot pool"]
    assert row == {"type": "Snapshot pool", "total": 4, "active": 4, "reclaimable": 0,
                   "size": len(BIG) + len(SMALL) + len(b"only in a") + len(b"only in b")}
    text = lam.run("df").out
    assert "Snapshot pool" in text and "the file pool saves 1.28MB" in text


def _pooled_images(lam: Lamina, seed: Path, tmp_path: Path) -> None:
    """pool/x (gzip) and pool/y (zstd): busybox, then a layer of their own each holding
    the same /data/big and /data/copy (one inode in both snapshots)."""
    tops = []
    for name in ("x", "y"):
        top = tmp_path / f"top-{name}"
        shutil.copytree(seed / "os", top, symlinks=True)
        (top / "data").mkdir()
        for f in ("big", "copy"):
            (top / "data" / f).write_bytes(BIG)
            os.utime(top / "data" / f, (MTIME, MTIME))
        (top / name).write_text(name)
        tops.append(top)
    lam.run("import", "pool/x", seed / "os", tops[0])
    lam.run("import", "--compression", "zstd", "pool/y", seed / "os", tops[1])


@pytest.mark.parametrize("mode", ["overlay", "walk"])
def test_writing_in_a_container_never_reaches_the_pool(fresh: Lamina, seed: Path,
                                                       tmp_path: Path, mode: str) -> None:
    _pooled_images(fresh, seed, tmp_path)
    with Store(fresh.root) as store:
        xs, ys = _snapshots(store, "pool/x"), _snapshots(store, "pool/y")
    shared = _inode(xs[1] / "data/big")
    assert shared == _inode(ys[1] / "data/big") == _inode(xs[1] / "data/copy")
    before = {e.path: (e.links, hashlib.sha256(Path(e.path).read_bytes()).hexdigest())
              for e in pool.entries(fresh.root)}
    # /data/copy shares /data/big's inode in the lower: it must not see the write.
    out = fresh.run("run", "--snapshotter", mode, "pool/x", "sh", "-c",
                    "echo changed >> /data/big; echo new > /data/copy2; "
                    "cmp -s /data/big /data/copy && echo SAME || echo DIFFERENT").out
    assert out.strip() == "DIFFERENT"
    after = {e.path: (e.links, hashlib.sha256(Path(e.path).read_bytes()).hexdigest())
             for e in pool.entries(fresh.root)}
    assert after == before
    for snap in (xs[1], ys[1]):
        assert (snap / "data/big").read_bytes() == BIG == (snap / "data/copy").read_bytes()
    assert _inode(ys[1] / "data/big") == shared
    # The next container starts from the image again.
    out = fresh.run("run", "--snapshotter", mode, "pool/y", "sh", "-c",
                    "cmp -s /data/big /data/copy && echo SAME").out
    assert out.strip() == "SAME"
    assert_no_leftovers(fresh.root)


def test_unpack_never_links_into_the_store(fresh: Lamina, seed: Path, tmp_path: Path) -> None:
    _pooled_images(fresh, seed, tmp_path)
    with Store(fresh.root) as store:
        _snapshots(store, "pool/x")
        _snapshots(store, "pool/y")
    pooled = _pool_inodes(fresh.root)
    assert pooled
    target = tmp_path / "unpacked"
    fresh.run("unpack", "pool/y", target)
    files = [Path(d, f) for d, _, fs in os.walk(target) for f in fs]
    regular = [p for p in files if stat.S_ISREG(os.lstat(p).st_mode)]
    assert len(regular) > 3
    assert all(os.lstat(p).st_nlink == 1 for p in regular)
    assert not {_inode(p) for p in regular} & set(pooled)
    assert (target / "data/big").read_bytes() == BIG


def test_pooled_snapshots_show_the_tree_unpack_gives(fresh: Lamina, seed: Path,
                                                     tmp_path: Path) -> None:
    """The overlay of pooled snapshots looks exactly like an unpack (and like snapshots
    made without the pool)."""
    from lamina.run.rootfs import open_rootfs

    _pooled_images(fresh, seed, tmp_path)
    fresh.run("unpack", "pool/y", tmp_path / "unpacked")
    with Store(fresh.root) as store:
        _snapshots(store, "pool/x")
        source = StoreTransport(store)
        image = resolve_image(source, source.resolve("pool/y"))
        with open_rootfs(store, source, image, "overlay") as rootfs:
            seen = tree_listing(rootfs.path)
            times = {p: os.lstat(rootfs.path / p).st_mtime_ns for p in seen}
    assert seen == tree_listing(tmp_path / "unpacked")
    assert times == {p: os.lstat(tmp_path / "unpacked" / p).st_mtime_ns for p in seen}


def test_overlay_mounts_without_the_inodes_index() -> None:
    """index=on would show a copy-up of one name of a lower inode in every other name
    of it (overlayfs.rst "Hardlinks"): pooled files of other layers would change."""
    from lamina.run.rootfs import _overlay_options

    options = _overlay_options(["/l2", "/l1"], "/u", "/w", [])
    assert "index=off" in options.split(",")


def test_an_entry_gc_takes_meanwhile_is_made_again(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """gc may remove an entry (one link: garbage) between an apply finding it and
    linking to it: the apply's own file then becomes the entry; nothing is lost."""
    root = tmp_path / "store"
    k = pool.key(hashlib.sha256(b"data").hexdigest(), 0o644, 0, 0, 0, ())
    entry_file = Path(pool.entry_path(root, k))
    entry_file.parent.mkdir(parents=True)
    entry_file.write_bytes(b"data")
    mine = tmp_path / "snapshot-file"
    mine.write_bytes(b"data")
    real_link = os.link
    calls: list[str] = []

    def racing(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        calls.append(str(dst))
        if len(calls) == 1:
            os.unlink(entry_file)              # gc, right after the apply saw it exist
            raise FileExistsError(errno.EEXIST, "File exists", str(dst))
        real_link(src, dst, *args, **kw)

    monkeypatch.setattr(os, "link", racing)
    assert pool.adopt(root, k, str(mine))
    assert _inode(mine) == _inode(entry_file) and mine.read_bytes() == b"data"
    assert os.lstat(mine).st_nlink == 2 and sorted(os.listdir(tmp_path)) == [
        "snapshot-file", "store"]
