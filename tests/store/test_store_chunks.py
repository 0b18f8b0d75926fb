"""Blobs kept as chunks (issue 11.3): each chunk stored once, every reader gets the blob's
exact bytes, gc and fsck understand chunks, a killed writer leaves a consistent store,
``df`` shows logical/physical bytes."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import ingest_names, put_image

from lamina.digest import Digest
from lamina.errors import IntegrityError, InvalidInput
from lamina.image import mediatypes as mt
from lamina.store import Store
from lamina.store.fsck import check
from lamina.store.gc import collect
from lamina_testing import Lamina, store_chunked_image


def data_of(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def cut(size: int, every: int) -> list[tuple[int, int]]:
    return [(o, min(every, size - o)) for o in range(0, size, every)]


def chunk_files(store: Store) -> set[str]:
    """Every chunk the store holds, packed or loose."""
    return {str(d) for d in store.blobs.chunks.chunks()}


def packs(store: Store) -> dict[str, int]:
    """Pack name -> its size (store/packs.py)."""
    d = store.root / "packs"
    return {p.stem: p.stat().st_size for p in d.glob("*.pack")} if d.is_dir() else {}


def index_bytes(store: Store) -> int:
    return sum(p.stat().st_size for p in (store.root / "packs").glob("*.idx"))


def damage_chunk(store: Store, digest: Digest, at: int) -> None:
    where = store.blobs.chunks.locate(digest)
    assert where is not None
    with open(where.path, "r+b") as f:
        f.seek(where.offset + at)
        byte = f.read(1)[0]
        f.seek(where.offset + at)
        f.write(bytes([byte ^ 0x01]))


def chunked_blob(store: Store, data: bytes, spans: list[tuple[int, int]]) -> Digest:
    d = store.blobs.put_bytes(data)
    store.blobs.put_chunked(d, store.blobs.path(d), spans)
    return d


def test_chunked_blob_reads_back_exact(store: Store) -> None:
    data = data_of(250_000, 1)
    d = chunked_blob(store, data, cut(len(data), 7_000))
    # the whole file is not kept: the chunks and the recipe are the blob now
    assert not store.blobs.path(d).exists() and store.blobs.chunks.has_recipe(d)
    assert store.blobs.has(d) and store.blobs.size(d) == len(data)
    assert list(store.blobs.list()) == [d]
    assert store.blobs.read_bytes(d) == data
    with store.blobs.open(d, len(data)) as r:     # verified stream, read in odd pieces
        got = bytearray()
        while piece := r.read(4_097):
            got += piece
        r.verify()
    assert got == data
    f = store.blobs.open_file(d)
    for offset, n in [(0, 1), (6_999, 2), (7_000, 7_000), (13_999, 20_000), (249_999, 10),
                      (250_000, 5), (123_456, 0)]:
        f.seek(offset)
        assert f.read(n) == data[offset:offset + n]
        assert f.tell() == min(offset + n, len(data)) if n else offset
    f.seek(-3, io.SEEK_END)
    assert f.read() == data[-3:]
    chunked = store.blobs.chunked(d)
    assert chunked is not None and chunked.pread(9_000, 100_000) == data[100_000:109_000]
    f.close()
    assert not ingest_names(store)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=6_000),
       cuts=st.lists(st.integers(min_value=1, max_value=5_999), max_size=30),
       reads=st.lists(st.tuples(st.integers(0, 6_100), st.integers(0, 7_000)), max_size=12))
def test_any_spans_any_reads(data: bytes, cuts: list[int],
                             reads: list[tuple[int, int]]) -> None:
    """Whatever the spans, the blob reads back byte-exact whole and at every offset."""
    points = sorted({c for c in cuts if c < len(data)} | {0, len(data)})
    spans = [(a, b - a) for a, b in zip(points, points[1:], strict=False)]
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp)) as store:
        d = chunked_blob(store, data, spans)
        assert store.blobs.read_bytes(d, len(data)) == data
        recipe = store.blobs.chunks.read_recipe(d)
        assert [n for _, n in recipe.chunks] == [n for _, n in spans]
        with store.blobs.open_file(d) as f:
            for offset, n in reads:
                f.seek(offset)
                assert f.read(n) == data[offset:offset + n]


def test_shared_spans_are_stored_once(store: Store) -> None:
    common = data_of(100_000, 2)
    a = common + data_of(20_000, 3)
    b = data_of(30_000, 4) + common
    da = chunked_blob(store, a, [(0, 100_000), (100_000, 20_000)])
    db = chunked_blob(store, b, [(0, 30_000), (30_000, 100_000)])
    assert len(chunk_files(store)) == 3        # the common span once
    shared = f"sha256:{hashlib.sha256(common).hexdigest()}"
    assert shared in chunk_files(store) and store.blobs.chunks.has_chunk(Digest.parse(shared))
    with store.blobs.chunks.open_chunk(Digest.parse(shared)) as r:
        assert r.read() == common
    space = store.blobs.space()
    recipes = sum(store.blobs.stored_size(x) for x in (da, db))
    assert (space.blobs, space.chunked, space.chunks) == (2, 2, 3)
    assert space.logical == len(a) + len(b)
    # one pack each: a's whole file (adopted), b's new span only; plus their indexes
    assert sorted(packs(store).values()) == [30_000, 120_000]
    assert space.physical == 150_000 + recipes + index_bytes(store)
    assert space.ratio > 1.5
    assert store.blobs.read_bytes(da) == a and store.blobs.read_bytes(db) == b


def test_deleting_one_blob_keeps_the_others_chunks(store: Store) -> None:
    common = data_of(50_000, 5)
    img_a = put_image(store, [common + b"a" * 1000], tag="a")
    img_b = put_image(store, [common + b"b" * 2000], tag="b")
    la, lb = img_a.layers[0], img_b.layers[0]
    store.blobs.put_chunked(la, store.blobs.path(la), [(0, 50_000), (50_000, 1000)])
    store.blobs.put_chunked(lb, store.blobs.path(lb), [(0, 50_000), (50_000, 2000)])
    assert len(chunk_files(store)) == 3
    store.meta.delete_tag("a")
    store.meta.delete_image(str(img_a.manifest))
    dry = collect(store, dry_run=True)
    report = collect(store)
    assert str(la) in report.blobs_removed and not store.blobs.has(la)
    # a's own chunk is dead, but its pack (a's whole file) is mostly b's common chunk:
    # it stays until at least half of it is dead (store/gc.py _sweep_packs)
    assert (report.chunks_removed, report.chunk_bytes_freed) == (0, 0)
    assert (dry.chunks_removed, dry.chunk_bytes_freed, dry.bytes_freed) == \
        (0, 0, report.bytes_freed)
    assert len(chunk_files(store)) == 3 and len(packs(store)) == 2
    assert store.blobs.read_bytes(lb) == common + b"b" * 2000
    assert check(store).clean


def test_gc_removes_orphan_chunks_and_counts_bytes(store: Store) -> None:
    data = data_of(40_000, 6)
    d = chunked_blob(store, data, cut(len(data), 10_000))   # named by no root
    keep = put_image(store, [b"kept layer"], tag="keep")
    assert len(chunk_files(store)) == 4 and len(packs(store)) == 1
    idx = index_bytes(store)
    report = collect(store)
    assert str(d) in report.blobs_removed
    assert (report.chunks_removed, report.chunk_bytes_freed) == (4, 40_000 + idx)
    recipe_bytes = report.bytes_freed - 40_000 - idx
    assert 0 < recipe_bytes < 1000       # the recipe itself, not the blob's logical size
    assert not chunk_files(store) and store.blobs.has(keep.layers[0])
    assert list(store.blobs.chunks.recipes()) == [] and not packs(store)
    assert not any((store.root / "packs").iterdir())


def test_a_lease_keeps_a_chunk_a_planner_is_about_to_reuse(store: Store) -> None:
    data = data_of(20_000, 7)
    d = chunked_blob(store, data, [(0, 15_000), (15_000, 5_000)])
    chunk = store.blobs.chunks.read_recipe(d).chunks[1][0]
    with store.lease() as lease:
        lease.add(chunk)
        report = collect(store)
        # the pack was three quarters dead: rewritten with the leased chunk alone
        assert str(d) in report.blobs_removed and report.chunks_removed == 1
        assert store.blobs.chunks.has_chunk(chunk) and list(packs(store).values()) == [5_000]
        with store.blobs.chunks.open_chunk(chunk) as r:
            assert r.read() == data[15_000:]
    assert collect(store).chunks_removed == 1 and not packs(store)


def test_fsck_names_every_blob_using_a_damaged_chunk(store: Store, tmp_path: Path) -> None:
    common = data_of(30_000, 8)
    img_a = put_image(store, [common + b"A" * 500], tag="a")
    img_b = put_image(store, [b"B" * 700 + common], tag="b")
    la, lb = img_a.layers[0], img_b.layers[0]
    store.blobs.put_chunked(la, store.blobs.path(la), [(0, 30_000), (30_000, 500)])
    store.blobs.put_chunked(lb, store.blobs.path(lb), [(0, 700), (700, 30_000)])
    shared = Digest("sha256", hashlib.sha256(common).hexdigest())
    damage_chunk(store, shared, 12_345)

    report = check(store)
    assert report.chunks_checked == 3
    assert report.corrupt_chunks == {str(shared): sorted([str(la), str(lb)])}
    assert set(report.corrupt) == {str(la), str(lb)}     # re-hashed whole, reassembled
    with pytest.raises(IntegrityError):
        store.blobs.read_bytes(la)
    lam = Lamina(store.root, tmp_path)
    res = lam.run("fsck", check=False)
    assert res.code == 1
    assert f"corrupt chunk {shared}, used by blob " in res.out
    assert str(la) in res.out and str(lb) in res.out
    assert lam.run("fsck", "--json", check=False).json()["corrupt_chunks"] == {
        str(shared): sorted([str(la), str(lb)])}
    repaired = check(store, repair=True)
    assert f"removed corrupt chunk {shared}" in repaired.repaired
    assert not store.blobs.has(la) and not store.blobs.has(lb)
    collect(store)
    assert check(store).clean


def test_a_missing_chunk_is_one_clear_error(store: Store) -> None:
    data = data_of(9_000, 9)
    d = chunked_blob(store, data, cut(len(data), 3_000))
    gone = store.blobs.chunks.read_recipe(d).chunks[1][0]
    store.blobs.chunks.forget_chunk(gone)
    with pytest.raises(IntegrityError, match=f"chunk {gone} is missing"):
        store.blobs.read_bytes(d)
    assert str(d) in check(store).corrupt


def test_bad_spans_and_wrong_content_name_nothing(store: Store, tmp_path: Path) -> None:
    data = data_of(10_000, 10)
    d = store.blobs.put_bytes(data)
    for spans in ([(0, 5_000)], [(0, 5_000), (5_001, 4_999)], [(0, 0), (0, 10_000)],
                  [(0, 6_000), (5_000, 5_000)]):
        with pytest.raises(InvalidInput):
            store.blobs.put_chunked(d, store.blobs.path(d), spans)
    assert store.blobs.path(d).exists() and not store.blobs.chunks.has_recipe(d)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(data[:-1] + b"\0")
    other = Digest.from_bytes(data + b"x")
    with pytest.raises(IntegrityError, match="not stored as chunks"):
        store.blobs.put_chunked(other, wrong, cut(10_000, 4_000))
    assert not store.blobs.has(other) and not ingest_names(store)
    assert store.blobs.read_bytes(d) == data
    # hashed before anything is written: nothing for gc either
    assert not packs(store) and collect(store).chunks_removed == 0


def test_put_chunked_is_idempotent_and_converts_a_whole_blob(store: Store) -> None:
    data = data_of(20_000, 11)
    d = store.blobs.put_bytes(data)
    first = store.blobs.put_chunked(d, store.blobs.path(d), cut(20_000, 8_000))
    src = store.root.parent / "copy"
    src.write_bytes(data)
    assert store.blobs.put_chunked(d, src, cut(20_000, 8_000)) == first
    # a crash after the recipe, before the whole file went: gc finishes the conversion
    store.blobs.path(d).write_bytes(data)
    assert store.blobs.stored_size(d) == 20_000
    store.meta.add_image(str(d), mt.OCI_LAYER, 20_000, [])
    assert collect(store).bytes_freed == 20_000
    assert not store.blobs.path(d).exists() and store.blobs.read_bytes(d) == data


def test_a_writer_publishes_as_chunks_when_given_spans(store: Store) -> None:
    """What ``commit_layer`` does with a chunked layer it wrote (import, build)."""
    data = data_of(64_000, 12)
    digest = Digest.from_bytes(data)
    with store.blobs.writer() as w:
        w.write(data)
        w.finish(digest, len(data))
        w.publish(cut(len(data), 16_000))
    assert w.recipe is not None and len(w.recipe.chunks) == 4
    assert store.blobs.chunks.has_recipe(digest) and not store.blobs.path(digest).exists()
    assert len(chunk_files(store)) == 4 and not ingest_names(store)
    # the verified ingest file itself became the pack: one file, no copy
    assert list(packs(store).values()) == [64_000]
    assert store.blobs.read_bytes(digest) == data
    # bytes that lie are refused before any recipe exists
    bad = Digest.from_bytes(b"x" * 10)
    with pytest.raises(IntegrityError), store.blobs.writer() as w:
        w.write(b"y" * 10)
        w.finish(bad, 10)
        w.publish([(0, 10)])
    assert not store.blobs.has(bad) and not ingest_names(store)


def test_chunk_contents_map(store: Store) -> None:
    data = data_of(5_000, 13)
    d = chunked_blob(store, data, [(0, 2_000), (2_000, 3_000)])
    (c1, n1), (c2, n2) = store.blobs.chunks.read_recipe(d).chunks
    content = "sha256:" + "c" * 64
    store.meta.record_chunk_content(content, str(c2), n2)
    store.meta.record_chunk_contents([(content, str(c1), n1), ("sha256:" + "d" * 64, str(c1), n1)])
    assert store.meta.find_chunk_for_content(content) == [(str(c1), n1), (str(c2), n2)]
    assert store.meta.find_chunk_for_content("sha256:" + "e" * 64) == []
    store.meta.add_image(str(d), mt.OCI_LAYER, 5_000, [])
    collect(store)          # reachable: rows stay
    assert len(store.meta.find_chunk_for_content(content)) == 2
    store.meta.delete_image(str(d))
    collect(store)          # chunks gone: so are their rows
    assert store.meta.find_chunk_for_content(content) == []
    assert store.meta.find_chunk_for_content("sha256:" + "d" * 64) == []


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from lamina.digest import Digest
from lamina.store import Store, chunks
stop_in = sys.argv[4]
write_recipe = chunks.ChunkStore._write_recipe
def stop(*args, **kw):
    print("stopped", flush=True)
    if stop_in != "pause":
        time.sleep(120)
    sys.stdin.readline()         # "pause": go on when told
    write_recipe(*args, **kw)
if stop_in == "commit":
    from lamina.store import packs
    packs.PackWriter.commit = stop
else:
    chunks.ChunkStore._write_recipe = stop
spans = [(o, min(4000, 20000 - o)) for o in range(0, 20000, 4000)]
Store(Path(sys.argv[1])).blobs.put_chunked(Digest.parse(sys.argv[2]), Path(sys.argv[3]), spans)
"""


@pytest.mark.parametrize("stop_in", ["recipe", "commit"])
def test_killed_writer_leaves_a_consistent_store(store: Store, tmp_path: Path,
                                                 stop_in: str) -> None:
    """kill -9 between the chunks and the recipe (or before the chunks are named): the
    blob is not there, fsck is clean, gc removes what the writer left and counts it."""
    data = data_of(20_000, 14)
    src = tmp_path / "blob"
    src.write_bytes(data)
    d = Digest.from_bytes(data)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(store.root), str(d),
                             str(src), stop_in], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"stopped\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not store.blobs.has(d)
    if stop_in == "recipe":
        assert len(chunk_files(store)) == 5 and not ingest_names(store)
        idx = index_bytes(store)
    else:
        assert not chunk_files(store) and len(ingest_names(store)) == 1   # the pack
        old = time.time() - 3600   # gc leaves young ingest files alone (create-then-lock gap)
        for name in ingest_names(store):
            os.utime(store.root / "ingest" / name, (old, old))
    lam = Lamina(store.root, tmp_path)
    fsck = lam.run("fsck", "--json").json()
    assert fsck["clean"] and fsck["chunks_checked"] == len(chunk_files(store))
    report = lam.run("gc", "--json").json()
    if stop_in == "recipe":
        assert (report["chunks_removed"], report["chunk_bytes_freed"]) == (5, 20_000 + idx)
    else:
        assert report["ingest_removed"] == 1 and report["bytes_freed"] == 20_000
    assert not chunk_files(store) and not ingest_names(store) and not packs(store)
    # and a retry completes
    store.blobs.put_chunked(d, src, cut(20_000, 4_000))
    assert store.blobs.read_bytes(d) == data


def test_save_unpack_and_df_of_a_chunked_image(tmp_path: Path) -> None:
    """``lamina save`` writes the layer's exact bytes, ``unpack`` applies it; ``df`` shows
    logical, physical and the ratio (text and --json)."""
    files = [(f"f{i}.bin", data_of(4_000, 100 + i)) for i in range(10)]
    first = store_chunked_image(tmp_path / "store", "docker.io/demo/one:latest", files,
                                span=1_024)
    second = store_chunked_image(tmp_path / "store", "docker.io/demo/two:latest",
                                 [*files, ("extra.bin", b"e" * 5)], span=1_024)
    lam = Lamina(tmp_path / "store", tmp_path)
    lam.run("save", "--format", "oci-archive", "-o", tmp_path / "one.tar", "demo/one")
    with tarfile.open(tmp_path / "one.tar") as tar:
        member = tar.extractfile(f"blobs/sha256/{first.layer.split(':')[1]}")
        assert member is not None and member.read() == first.layer_bytes
    lam.run("unpack", "demo/one", tmp_path / "unpacked")      # read through the recipe
    assert {p.name: p.read_bytes() for p in (tmp_path / "unpacked").iterdir()} == dict(files)
    usage = lam.run("df", "--json").json()
    storage = usage["storage"]
    # the two layers share all but their tails: the chunks of their common prefix once
    with Store(tmp_path / "store") as store:
        space = store.blobs.space()
    assert storage == space.to_json()
    assert storage["chunked_blobs"] == 2 and storage["logical"] > storage["physical"]
    assert storage["logical"] >= len(first.layer_bytes) + len(second.layer_bytes)
    assert storage["ratio"] == round(storage["logical"] / storage["physical"], 3)
    summary = {r["type"]: r for r in usage["summary"]}
    assert summary["Blobs"]["size"] == storage["physical"]
    text = lam.run("df").out
    assert "Blob bytes:" in text and "logical" in text and "physical" in text
    assert f"ratio {storage['ratio']:.2f}" in text and "2 kept as" in text
    lam.assert_consistent()


def test_gc_waits_for_a_writer_between_its_chunks_and_its_recipe(store: Store,
                                                                 tmp_path: Path) -> None:
    """A gc that runs while a writer has named its chunks but not yet its recipe must not
    take them (the writer holds chunks/lock shared, gc's sweep takes it exclusive)."""
    import threading

    data = data_of(20_000, 15)
    src = tmp_path / "blob"
    src.write_bytes(data)
    d = Digest.from_bytes(data)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(store.root), str(d),
                             str(src), "pause"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline() == b"stopped\n"
    assert len(chunk_files(store)) == 5
    reports: list[object] = []
    with Store(store.root) as other:
        gc = threading.Thread(target=lambda: reports.append(collect(other)))
        gc.start()
        time.sleep(0.5)              # let gc reach the chunk lock (not an assertion)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(30) == 0
        gc.join(30)
    proc.stdout.close()
    assert reports and not gc.is_alive()
    assert store.blobs.read_bytes(d) == data      # its chunks all survived that gc


def test_a_damaged_recipe_stops_the_chunk_sweep(store: Store, tmp_path: Path) -> None:
    """What a damaged recipe needs is unknown: gc removes no chunk and says which recipe;
    fsck calls the blob corrupt; after ``fsck --repair`` gc sweeps again."""
    d = chunked_blob(store, data_of(8_000, 16), cut(8_000, 2_000))
    store.meta.add_image(str(d), mt.OCI_LAYER, 8_000, [])
    orphan = chunked_blob(store, data_of(3_000, 17), cut(3_000, 1_000))
    store.blobs.chunks.recipe_path(d).write_bytes(b"{not json")
    with pytest.raises(IntegrityError, match="recipe is damaged"):
        store.blobs.read_bytes(d)
    lam = Lamina(store.root, tmp_path)
    out = lam.run("gc").out
    assert f"blob {d}: its recipe is damaged; no chunk removed" in out
    assert str(orphan) in out and len(chunk_files(store)) == 7
    assert str(d) in check(store).corrupt
    check(store, repair=True)
    assert collect(store).chunks_removed == 7 and not chunk_files(store)
