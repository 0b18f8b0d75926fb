"""Garbage collection: the pure mark, then collect over a real store."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from store_helpers import blob_names, ingest_names, put_image

from lamina.digest import Digest
from lamina.store import Store, collect, reachable


@pytest.mark.parametrize(("roots", "edges", "want"), [
    ([], {"a": ["b"]}, set()),
    (["a"], {}, {"a"}),
    (["a"], {"a": ["b", "c"], "b": ["d"], "x": ["a"]}, {"a", "b", "c", "d"}),
    (["a"], {"a": ["b"], "b": ["a"]}, {"a", "b"}),                 # cycles terminate
    (["a", "x"], {"a": ["c"], "x": ["c"], "c": ["d"]}, {"a", "x", "c", "d"}),  # shared child
    (["i"], {"i": ["m1", "m2"], "m1": ["cfg", "l1"], "m2": ["cfg", "l2"],
             "orphan": ["l3"]}, {"i", "m1", "m2", "cfg", "l1", "l2"}),
])
def test_reachable(roots: list[str], edges: dict[str, list[str]], want: set[str]) -> None:
    assert reachable(roots, edges) == want


def test_reachable_does_not_touch_its_inputs() -> None:
    edges = {"a": ["b"], "b": ["c"]}
    roots = ["a"]
    reachable(roots, edges)
    assert edges == {"a": ["b"], "b": ["c"]} and roots == ["a"]


def test_collect_keeps_tagged_recorded_and_leased(store: Store) -> None:
    shared = b"shared base layer"
    tagged = put_image(store, [shared, b"top of tagged"], tag="docker.io/library/t:latest")
    untagged = put_image(store, [shared, b"top of untagged"], tag=None)   # record only
    orphan = put_image(store, [shared, b"top of orphan"], record=False)   # edges, no root
    leased_blob = store.blobs.put_bytes(b"being written by a pull")
    stray = store.blobs.put_bytes(b"nobody wants me")
    lease = store.meta.create_lease(ttl=3600)
    store.meta.add_lease_resource(lease, str(leased_blob))
    # A lease may also hold a manifest: what it reaches is protected too.
    leased_image = put_image(store, [b"leased image layer"], record=False)
    store.meta.add_lease_resource(lease, str(leased_image.manifest))

    before = blob_names(store)
    sizes = {n: store.blobs.size(Digest.parse(n)) for n in before}
    report = collect(store)

    keep = tagged.blobs | untagged.blobs | leased_image.blobs | {str(leased_blob)}
    gone = {str(orphan.manifest), str(orphan.config), str(orphan.layers[1]), str(stray)}
    assert before == keep | gone
    assert blob_names(store) == keep
    assert sorted(report.blobs_removed) == sorted(gone)
    assert report.bytes_freed == sum(sizes[n] for n in gone)
    # Every remaining blob is readable and intact.
    for name in keep:
        store.blobs.read_bytes(Digest.parse(name))
    # A second run finds nothing more.
    assert collect(store).blobs_removed == []


def test_collect_reports_bytes_freed(store: Store) -> None:
    a = store.blobs.put_bytes(b"x" * 1000)
    b = store.blobs.put_bytes(b"y" * 234)
    report = collect(store)
    assert sorted(report.blobs_removed) == sorted([str(a), str(b)])
    assert report.bytes_freed == 1234


def test_expired_lease_does_not_protect(store: Store) -> None:
    kept = store.blobs.put_bytes(b"live lease")
    dropped = store.blobs.put_bytes(b"expired lease")
    live = store.meta.create_lease(ttl=3600)
    dead = store.meta.create_lease(ttl=-1)
    store.meta.add_lease_resource(live, str(kept))
    store.meta.add_lease_resource(dead, str(dropped))
    report = collect(store)
    assert report.blobs_removed == [str(dropped)]
    assert report.leases_expired == 1
    assert blob_names(store) == {str(kept)}
    assert [x for x, _ in store.meta.leases()] == [live]
    # Once the live lease ends, its blob goes too.
    store.meta.delete_lease(live)
    assert collect(store).blobs_removed == [str(kept)]
    assert blob_names(store) == set()


def test_collect_drops_records_and_refs_of_removed(store: Store) -> None:
    kept = put_image(store, [b"k1"], tag="k:1")
    orphan = put_image(store, [b"o1", b"o2"], record=False)
    assert {r.digest for r in store.meta.layers()} == {str(d) for d in
                                                       kept.layers + orphan.layers}
    assert store.meta.children(str(orphan.manifest))
    collect(store)
    assert {r.digest for r in store.meta.layers()} == {str(d) for d in kept.layers}
    assert store.meta.children(str(orphan.manifest)) == []
    assert {p for p, _ in store.meta.all_refs()} == {str(kept.manifest)}
    tag = store.meta.get_tag("k:1")
    assert tag is not None and tag.digest == str(kept.manifest)


def test_collect_after_untag_removes_image_only_when_record_goes(store: Store) -> None:
    img = put_image(store, [b"only layer"], tag="a:1")
    store.meta.delete_tag("a:1")
    # The image record is still a root.
    assert collect(store).blobs_removed == []
    store.meta.delete_image(str(img.manifest))
    assert sorted(collect(store).blobs_removed) == sorted(img.blobs)
    assert blob_names(store) == set()
    assert store.meta.layers() == []


def test_collect_snapshots(store: Store) -> None:
    img = put_image(store, [b"base"], tag="a:1")
    used = Digest.from_bytes(b"chain used")
    unused = Digest.from_bytes(b"chain unused")
    for chain in (used, unused):
        d = store.snapshot_path(chain)
        (d / "etc").mkdir(parents=True)
        (d / "etc" / "hostname").write_text("x")
        store.meta.add_snapshot(str(chain), None, str(chain), 1)
    store.meta.add_refs(str(img.manifest), [f"snapshot:{used}"])
    report = collect(store)
    assert report.snapshots_removed == [str(unused)]
    assert (store.snapshot_path(used) / "etc" / "hostname").read_text() == "x"
    assert not store.snapshot_path(unused).exists()
    assert [s[0] for s in store.meta.snapshots()] == [str(used)]


def test_dry_run_removes_nothing(store: Store) -> None:
    put_image(store, [b"kept"], tag="a:1")
    orphan = put_image(store, [b"o"], record=False)
    stray = store.blobs.put_bytes(b"stray")
    chain = Digest.from_bytes(b"chain")
    store.snapshot_path(chain).mkdir()
    store.meta.add_snapshot(str(chain), None, str(chain), 0)
    blobs, layers, refs = blob_names(store), store.meta.layers(), sorted(store.meta.all_refs())

    report = collect(store, dry_run=True)

    assert sorted(report.blobs_removed) == sorted(orphan.blobs | {str(stray)})
    assert report.bytes_freed > 0
    assert report.snapshots_removed == [str(chain)]
    assert blob_names(store) == blobs
    assert store.meta.layers() == layers
    assert sorted(store.meta.all_refs()) == refs
    assert store.snapshot_path(chain).is_dir()
    assert store.meta.has_snapshot(str(chain))


def test_gc_reports_ingest_bytes_in_dry_run_and_real_run(store: Store) -> None:
    """#10.8: an abandoned ingest file's bytes are freed, and said so, by both runs."""
    abandoned = store.blobs.ingest_dir / "sha256-00000000deadbeef"
    abandoned.write_bytes(b"x" * 4321)
    old = time.time() - 3600
    os.utime(abandoned, (old, old))
    dry = collect(store, dry_run=True)
    assert (dry.ingest_removed, dry.bytes_freed) == (1, 4321)
    assert abandoned.exists()
    real = collect(store)
    assert (real.ingest_removed, real.bytes_freed) == (1, 4321)
    assert ingest_names(store) == []


# A process that takes a lease the way load/pull/import/build do, registers a blob in
# it, says which, and waits to be killed.
_LEASE_HOLDER = """
import io, sys, time
from lamina.digest import Digest
from lamina.store import Store
store = Store(sys.argv[1])
data = b"written by " + sys.argv[2].encode()
if sys.argv[2] == "lease":
    lease = store.open_lease()
    digest = store.blobs.put_bytes(data)
    lease.add(digest)
    lease_id = lease.id
else:
    from lamina.image import mediatypes as mt
    from lamina.image.manifest import Descriptor
    from lamina.transport.local import StoreTransport
    sink = StoreTransport(store)
    digest = Digest.from_bytes(data)
    sink.put_blob(Descriptor(mt.OCI_LAYER, digest, len(data)), io.BytesIO(data))
    while not store.blobs.has(digest):   # published on a thread of its own
        time.sleep(0.01)
    # its lease is the one whose lock file this process holds open
    import os
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass   # the listing's own descriptor
    lease_id, = [os.path.basename(x)[:-5] for x in links if x.endswith(".lock")]
print(digest, lease_id, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["lease", "transport"])
def test_killed_lease_holder_pins_nothing(store: Store, kind: str) -> None:
    """#10.8: a lease lives while its process holds its lock file; after kill -9 the
    next gc drops it and frees its blobs, however young the lease."""
    procs = [subprocess.Popen([sys.executable, "-c", _LEASE_HOLDER, str(store.root), kind],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        held = []
        for p in procs:
            assert p.stdout is not None
            digest, lease_id = p.stdout.readline().split()
            held.append((digest, lease_id))
        assert held[0][0] == held[1][0]   # both protect the same blob
        # Alive: the lease protects the blob; a dry run agrees.
        assert collect(store, dry_run=True).blobs_removed == []
        assert collect(store).blobs_removed == []
        assert {x for x, _ in store.meta.leases()} == {lid for _, lid in held}
        procs[0].kill()
        procs[0].wait()
        report = collect(store)
        assert report.blobs_removed == [] and report.leases_expired == 1
        assert {x for x, _ in store.meta.leases()} == {held[1][1]}
        assert not store.lease_lock(held[0][1]).exists()
        procs[1].kill()
        procs[1].wait()
        dry = collect(store, dry_run=True)
        report = collect(store)
        assert report.blobs_removed == dry.blobs_removed == [held[1][0]]
        assert report.bytes_freed == dry.bytes_freed > 0
        assert store.meta.leases() == [] and list(store.lease_dir.iterdir()) == []
        assert blob_names(store) == set()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_collect_sweeps_abandoned_ingest_only(store: Store) -> None:
    abandoned = store.blobs.ingest_dir / "sha256-00000000deadbeef"
    abandoned.write_bytes(b"left by a crash")
    old = time.time() - 3600
    os.utime(abandoned, (old, old))
    with store.blobs.writer() as w:
        w.write(b"in flight")
        os.utime(w.path, (old, old))
        report = collect(store)
        assert report.ingest_removed == 1
        assert ingest_names(store) == [w.path.name]
        d = w.commit()
    assert blob_names(store) == {str(d)}
