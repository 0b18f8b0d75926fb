"""Snapshots: one directory per layer by chain id, shared, whiteouts in overlay form,
kept by gc while an image or a running container uses them."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers, entry, make_tar, store_image

from lamina.image.config import chain_ids
from lamina.layer.overlay import is_opaque
from lamina.run.rootfs import open_rootfs
from lamina.run.snapshots import Snapshotter, snapshot_key
from lamina.store.gc import collect
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import ResolvedImage, resolve_image
from lamina_testing import Lamina, need_root, seed_sources, tree_listing

DIR, SYM = tarfile.DIRTYPE, tarfile.SYMTYPE


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def _image(store: Store, ref: str) -> ResolvedImage:
    source = StoreTransport(store)
    return resolve_image(source, source.resolve(ref))


def test_two_images_share_the_snapshots_of_their_common_layers(
        fresh: Lamina, seed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh.run("import", "demo/a", *seed_sources(seed, "a"))
    fresh.run("import", "demo/b", *seed_sources(seed, "b"))
    extracted: list[str] = []
    real = Snapshotter._extract

    def counting(self: Snapshotter, *args: object, **kw: object) -> None:
        extracted.append(str(args[3]))  # the chain id
        real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Snapshotter, "_extract", counting)
    with Store(fresh.root) as store:
        snaps = Snapshotter(store)
        source = StoreTransport(store)
        a, b = _image(store, "demo/a"), _image(store, "demo/b")
        dirs_a = snaps.ensure(source, a.manifest.layers, a.config.diff_ids, owner=a.digest)
        inodes = [p.stat().st_ino for p in dirs_a]
        dirs_b = snaps.ensure(source, b.manifest.layers, b.config.diff_ids, owner=b.digest)
        assert dirs_a[:3] == dirs_b[:3] and dirs_a[3] != dirs_b[3]
        assert [p.stat().st_ino for p in dirs_b[:3]] == inodes[:3]  # not made again
        assert len(extracted) == 5  # 3 shared + one top layer each
        assert dirs_b == [store.snapshot_path(c) for c in chain_ids(b.config.diff_ids)]
        # Each holds only its own layer: the page is in the top one, busybox in the first.
        assert (dirs_a[3] / "var/www/html/index.html").exists()
        assert not (dirs_a[2] / "var/www/html/index.html").exists()
        assert (dirs_a[0] / "bin/busybox").exists() and not (dirs_a[1] / "bin/busybox").exists()
        # Ensuring again extracts nothing.
        snaps.ensure(source, a.manifest.layers, a.config.diff_ids, owner=a.digest)
        assert len(extracted) == 5
        assert len(store.meta.snapshots()) == 5
        assert set(store.meta.children(a.digest)) >= {
            snapshot_key(c) for c in chain_ids(a.config.diff_ids)}
        # gc keeps what an image owns; removing the image lets its own snapshot go.
        assert collect(store).snapshots_removed == []
        store.meta.delete_tag("docker.io/demo/a:latest")
        store.meta.delete_image(a.digest)
        report = collect(store)
        assert report.snapshots_removed == [str(chain_ids(a.config.diff_ids)[3])]
        assert not dirs_a[3].exists() and all(p.is_dir() for p in dirs_b)
    assert_no_leftovers(fresh.root)


def test_concurrent_ensure_of_one_stack(fresh: Lamina, seed: Path) -> None:
    fresh.run("import", "demo/a", *seed_sources(seed, "a"))
    results: list[list[Path]] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            with Store(fresh.root) as store:
                image = _image(store, "demo/a")
                results.append(Snapshotter(store).ensure(
                    StoreTransport(store), image.manifest.layers, image.config.diff_ids))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ensure) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 3
    assert results[0] == results[1] == results[2]
    assert len(os.listdir(fresh.root / "snapshots")) == 4
    assert_no_leftovers(fresh.root)


def _whiteout_image(store: Store) -> ResolvedImage:
    l1 = make_tar([
        entry("d/", DIR, mode=0o755), entry("d/a", data=b"a"), entry("d/b", data=b"b"),
        entry("d/sub/", DIR, mode=0o750), entry("d/sub/x", data=b"x"),
        entry("f", data=b"f"), entry("keep", data=b"keep"),
        entry("o/", DIR, mode=0o755), entry("o/old", data=b"old"), entry("o/keep", data=b"k"),
        entry("r/", DIR, mode=0o755), entry("r/gone", data=b"gone"),
        entry("t", data=b"file t"), entry("ln", SYM, linkname="d/b"),
    ])
    l2 = make_tar([
        entry("d/", DIR, mode=0o755), entry("d/.wh.a"),
        entry(".wh.f"),
        entry("o/", DIR, mode=0o711), entry("o/.wh..wh..opq"), entry("o/new", data=b"new"),
        entry("o/keep", data=b"k2"),
        entry(".wh.r"), entry("r/", DIR, mode=0o700), entry("r/y", data=b"y"),  # delete, add
        entry("t/", DIR, mode=0o755), entry("t/z", data=b"z"),  # a dir replaces a file
        entry(".wh.ln"),
    ])
    l3 = make_tar([
        entry("d/", DIR, mode=0o755), entry("d/sub/", DIR, mode=0o750), entry("d/sub/.wh.x"),
        entry("d/sub/n", data=b"n"), entry("f", data=b"f again"),
    ])
    store_image(store, "crafted/whiteouts", [l1, l2, l3])
    return _image(store, "crafted/whiteouts")


def test_overlay_whiteouts_give_the_merged_view_unpack_gives(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store(root) as store:
        image = _whiteout_image(store)
        source = StoreTransport(store)
        dirs = Snapshotter(store).ensure(source, image.manifest.layers, image.config.diff_ids)
        # The middle layer, as overlayfs reads a lowerdir.
        mid = dirs[1]
        for name in ("f", "d/a", "ln"):
            st = os.lstat(mid / name)
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name
        assert is_opaque(str(mid / "o")) and is_opaque(str(mid / "r"))
        assert not is_opaque(str(mid / "d")) and not is_opaque(str(mid / "t"))
        views = {}
        for mode in ("overlay", "walk"):
            with open_rootfs(store, source, image, mode) as rootfs:  # type: ignore[arg-type]
                views[mode] = tree_listing(rootfs.path)
        from lamina.run.unpack import unpack_image

        unpack_image(source, image.descriptor, tmp_path / "unpacked")
        unpacked = tree_listing(tmp_path / "unpacked")
    assert views["overlay"] == views["walk"] == unpacked
    names = sorted(unpacked)
    assert names == ["d", "d/b", "d/sub", "d/sub/n", "f", "keep", "o", "o/keep", "o/new",
                     "r", "r/y", "t", "t/z"]
    assert unpacked["f"][4] == hashlib.sha256(b"f again").hexdigest()
    assert unpacked["o/keep"][4] == hashlib.sha256(b"k2").hexdigest()
    assert unpacked["o"][1] == 0o711 and unpacked["r"][1] == 0o700
    assert_no_leftovers(root)


def test_a_running_container_keeps_its_snapshots_from_gc(fresh: Lamina, seed: Path) -> None:
    fresh.run("import", "demo/a", *seed_sources(seed, "a"))
    with Store(fresh.root) as store:
        image = _image(store, "demo/a")
        with open_rootfs(store, StoreTransport(store), image, "overlay") as rootfs:
            store.meta.delete_tag("docker.io/demo/a:latest")
            store.meta.delete_image(image.digest)
            assert collect(store).snapshots_removed == []   # the rootfs' lease holds them
            assert (rootfs.path / "var/www/html/index.html").read_bytes()
        assert len(collect(store).snapshots_removed) == 4
    assert_no_leftovers(fresh.root)


@pytest.mark.parametrize("mode", ["overlay", "walk"])
def test_scratch_rootfs_is_empty_and_records_what_is_written(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "store"
    with Store(root) as store:
        with open_rootfs(store, StoreTransport(store), None, mode) as rootfs:  # type: ignore[arg-type]
            assert os.listdir(rootfs.path) == []
            assert stat.S_IMODE(rootfs.path.stat().st_mode) == 0o755
            (rootfs.path / "hello").write_text("hi")
            changes = rootfs.changes(None)
            assert changes.added == ["hello"]
        assert_no_leftovers(root)


def test_snapshots_need_root_or_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lamina.errors import StoreError

    with Store(tmp_path / "store") as store:
        image = _whiteout_image(store)
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        with pytest.raises(StoreError, match="need root.*walk snapshotter"):
            Snapshotter(store).ensure(StoreTransport(store), image.manifest.layers,
                                      image.config.diff_ids)
        with pytest.raises(StoreError, match="overlay mounts need root"):
            open_rootfs(store, StoreTransport(store), image, "overlay")
    assert_no_leftovers(tmp_path / "store")


def test_a_layer_cannot_smuggle_overlayfs_instructions(tmp_path: Path) -> None:
    """trusted.overlay.* xattrs in a tar would steer overlayfs (opaque, redirect) from a
    lowerdir; snapshots drop them, so both snapshotters show the same tree."""
    lower = make_tar([entry("d/", DIR, mode=0o755), entry("d/lower", data=b"l")])
    smuggled, _ = entry("d/", DIR, mode=0o755)
    smuggled.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y",
                            "SCHILY.xattr.user.kept": "yes"}
    upper = make_tar([(smuggled, b""), entry("d/upper", data=b"u")])
    root = tmp_path / "store"
    with Store(root) as store:
        store_image(store, "crafted/smuggle", [lower, upper])
        image = _image(store, "crafted/smuggle")
        source = StoreTransport(store)
        top = Snapshotter(store).ensure(source, image.manifest.layers, image.config.diff_ids)[1]
        assert not is_opaque(str(top / "d"))
        assert os.getxattr(top / "d", "user.kept") == b"yes"
        views = {}
        for mode in ("overlay", "walk"):
            with open_rootfs(store, source, image, mode) as rootfs:  # type: ignore[arg-type]
                views[mode] = sorted(os.listdir(rootfs.path / "d"))
    assert views["overlay"] == views["walk"] == ["lower", "upper"]
    assert_no_leftovers(root)
