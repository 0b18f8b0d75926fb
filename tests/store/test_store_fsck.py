"""fsck: re-hash every blob, report dangling records, and repair to a clean store."""

from __future__ import annotations

from store_helpers import blob_names, put_image

from lamina.digest import Digest
from lamina.image import mediatypes as mt
from lamina.store import Store
from lamina.store.fsck import check


def test_clean_store_is_clean(store: Store) -> None:
    put_image(store, [b"base", b"a"], tag="a:1")
    put_image(store, [b"base", b"b"], tag="b:1")
    report = check(store)
    assert report.clean
    assert report.blobs_checked == len(blob_names(store)) == 7
    assert (report.corrupt, report.dangling, report.repaired) == ([], [], [])


def test_empty_store_is_clean(store: Store) -> None:
    report = check(store)
    assert report.clean and report.blobs_checked == 0


def test_corrupt_blob_reported(store: Store) -> None:
    img = put_image(store, [b"base", b"top layer"], tag="a:1")
    layer = img.layers[1]
    path = store.blobs.path(layer)
    path.write_bytes(b"top layeR")  # same size, other bytes
    report = check(store)
    assert not report.clean
    assert report.corrupt == [str(layer)]
    assert f"image {img.manifest} is missing {layer}" in report.dangling
    assert f"layer record {layer} has no blob" in report.dangling
    # Without repair nothing is touched.
    assert path.read_bytes() == b"top layeR"
    assert report.repaired == []


def test_tag_at_missing_manifest_reported(store: Store) -> None:
    ghost = Digest.from_bytes(b"never stored")
    store.meta.set_tag("docker.io/library/ghost:latest", str(ghost), mt.OCI_MANIFEST)
    report = check(store)
    assert report.corrupt == []
    assert report.dangling == [f"tag docker.io/library/ghost:latest points at missing {ghost}"]


def test_deleted_blob_and_missing_snapshot_dir_reported(store: Store) -> None:
    img = put_image(store, [b"only"], tag="a:1")
    store.blobs.delete(img.config)
    chain = Digest.from_bytes(b"chain")
    store.meta.add_snapshot(str(chain), None, str(chain), 0)
    report = check(store)
    assert report.corrupt == []
    assert sorted(report.dangling) == sorted([
        f"image {img.manifest} is missing {img.config}",
        f"snapshot {chain} has no directory",
    ])


def test_repair_then_clean(store: Store) -> None:
    good = put_image(store, [b"base", b"good top"], tag="good:1")
    bad = put_image(store, [b"base", b"bad top"], tag="bad:1")
    store.meta.set_tag("bad:alias", str(bad.manifest), mt.OCI_MANIFEST)
    store.blobs.path(bad.layers[1]).write_bytes(b"rotten!")
    ghost = Digest.from_bytes(b"ghost manifest")
    store.meta.set_tag("ghost:1", str(ghost), mt.OCI_MANIFEST)
    chain = Digest.from_bytes(b"chain")
    store.meta.add_snapshot(str(chain), None, str(chain), 0)

    first = check(store, repair=True)
    assert first.corrupt == [str(bad.layers[1])]
    assert not first.clean
    assert f"removed corrupt blob {bad.layers[1]}" in first.repaired
    assert {"untagged bad:1", "untagged bad:alias", "untagged ghost:1",
            f"removed image record {bad.manifest}"} <= set(first.repaired)

    second = check(store)
    assert second.clean, (second.corrupt, second.dangling)
    assert not store.blobs.has(bad.layers[1])
    assert store.meta.get_image(str(bad.manifest)) is None
    assert [t.name for t in store.meta.tags()] == ["good:1"]
    assert not store.meta.has_snapshot(str(chain))
    # The good image, which shares the base layer, is whole.
    assert store.meta.get_image(str(good.manifest)) is not None
    for d in good.blobs:
        store.blobs.read_bytes(Digest.parse(d))
    assert {r.digest for r in store.meta.layers()} >= {str(d) for d in good.layers}
