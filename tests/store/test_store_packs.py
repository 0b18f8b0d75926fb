"""Packs (store/packs.py): chunks kept many to a file.  A cold publish adopts the blob's
own file, later blobs pack only their new chunks, gc drops dead packs and rewrites
half-dead ones (its dry run agreeing), a crashed writer's pack and a damaged index are
handled, readers with a stale view of the packs still read, and the loose chunks of an
older store are still read, swept and checked."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from store_helpers import ingest_names
from test_store_chunks import chunk_files, chunked_blob, cut, packs

from lamina.digest import Digest
from lamina.image import mediatypes as mt
from lamina.image.manifest import Descriptor
from lamina.store import Store
from lamina.store.chunks import Recipe
from lamina.store.fsck import check
from lamina.store.gc import collect
from lamina.store.packs import index_size
from lamina.transport.local import StoreTransport
from lamina_testing import Lamina


def data_of(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_a_whole_blob_cut_later_becomes_its_own_pack(store: Store) -> None:
    """All chunks new: the stored whole file is linked in as the pack (no copy), and
    after the whole name goes it has one name only (a pulled chunked layer cut when a
    delta pull first shares it, layer/chunkmap.cut_pending)."""
    data = data_of(300_000, 1)
    desc = Descriptor(mt.OCI_LAYER, Digest.from_bytes(data), len(data))
    sink = StoreTransport(store)
    sink.put_blob(desc, io.BytesIO(data))
    sink._settle()
    sink.close()
    inode = store.blobs.path(desc.digest).stat().st_ino
    store.blobs.put_chunked(desc.digest, store.blobs.path(desc.digest),
                            cut(len(data), 10_000), verified=True)
    (name,) = packs(store)
    pack = store.root / "packs" / f"{name}.pack"
    assert pack.read_bytes() == data and pack.stat().st_nlink == 1
    assert pack.stat().st_ino == inode
    assert (store.root / "packs" / f"{name}.idx").stat().st_size == index_size(30)
    assert not ingest_names(store) and not store.blobs.path(desc.digest).exists()
    assert store.blobs.read_bytes(desc.digest) == data


def test_gc_rewrites_a_half_dead_pack_and_its_dry_run_agrees(store: Store) -> None:
    keep = data_of(10_000, 2)
    a = chunked_blob(store, keep + data_of(40_000, 3), [(0, 10_000), (10_000, 40_000)])
    b = chunked_blob(store, keep + data_of(1_000, 4), [(0, 10_000), (10_000, 1_000)])
    store.meta.add_image(str(b), mt.OCI_LAYER, 11_000, [])
    before = dict(packs(store))
    assert sorted(before.values()) == [1_000, 50_000]   # b packed only its new chunk
    dry = collect(store, dry_run=True)
    assert packs(store) == before
    report = collect(store)
    assert str(a) in report.blobs_removed
    # a's pack was 4/5 dead: rewritten holding the chunk b shares
    assert sorted(packs(store).values()) == [1_000, 10_000]
    assert (dry.chunks_removed, dry.chunk_bytes_freed, dry.bytes_freed) == \
        (report.chunks_removed, report.chunk_bytes_freed, report.bytes_freed)
    assert report.chunks_removed == 1
    assert report.chunk_bytes_freed == 50_000 + index_size(2) - 10_000 - index_size(1)
    assert store.blobs.read_bytes(b) == keep + data_of(1_000, 4)
    assert check(store).clean and collect(store).chunks_removed == 0


def test_a_pack_without_its_index_is_a_crashed_writers_and_gc_removes_it(
        store: Store) -> None:
    d = chunked_blob(store, data_of(8_000, 5), cut(8_000, 2_000))
    store.meta.add_image(str(d), mt.OCI_LAYER, 8_000, [])
    debris = store.root / "packs" / "0123456789abcdef0123456789abcdef.pack"
    debris.write_bytes(b"x" * 3_000)      # renamed into place, killed before its index
    assert check(store).clean              # not a chunk of anything: nothing to check
    report = collect(store)
    assert report.chunk_bytes_freed == 3_000 and not debris.exists()
    assert store.blobs.read_bytes(d) == data_of(8_000, 5)


def test_a_damaged_pack_index_stops_the_sweep_and_fsck_repairs(store: Store,
                                                              tmp_path: Path) -> None:
    d = chunked_blob(store, data_of(6_000, 6), cut(6_000, 3_000))
    store.meta.add_image(str(d), mt.OCI_LAYER, 6_000, [])
    orphan = chunked_blob(store, data_of(4_000, 7), cut(4_000, 2_000))
    ((name, _),) = [(n, s) for n, s in packs(store).items() if s == 6_000]
    idx = store.root / "packs" / f"{name}.idx"
    raw = bytearray(idx.read_bytes())
    raw[40] ^= 0xFF
    idx.write_bytes(bytes(raw))
    with Store(store.root) as fresh:       # a new process: reads the damaged index
        lam = Lamina(store.root, tmp_path)
        res = lam.run("fsck", check=False)
        assert res.code == 1 and f"pack {name}: its index is damaged" in res.out
        report = collect(fresh)
        assert str(orphan) in report.blobs_removed and report.chunks_removed == 0
        assert len(packs(fresh)) == 2      # nothing swept while a pack is unreadable
        repaired = check(fresh, repair=True)
        assert f"removed pack {name} (its index was damaged)" in repaired.repaired
        assert str(d) in repaired.corrupt and not fresh.blobs.has(d)
        collect(fresh)
        assert not packs(fresh) and check(fresh).clean


def test_a_reader_with_a_stale_view_reads_a_rewritten_pack(store: Store) -> None:
    """Another process rewrote the pack this one had indexed (gc): the next read finds
    the chunk where it lies now."""
    keep = data_of(5_000, 8)
    a = chunked_blob(store, keep + data_of(30_000, 9), [(0, 5_000), (5_000, 30_000)])
    b = chunked_blob(store, data_of(700, 10) + keep, [(0, 700), (700, 5_000)])
    store.meta.add_image(str(b), mt.OCI_LAYER, 5_700, [])
    assert store.blobs.read_bytes(b)[700:] == keep          # this view is loaded now
    old = set(packs(store))
    with Store(store.root) as other:
        assert str(a) in collect(other).blobs_removed
    assert set(packs(store)) != old                         # rewritten
    assert store.blobs.read_bytes(b) == data_of(700, 10) + keep


def test_loose_chunks_of_an_older_store_are_read_swept_and_checked(store: Store) -> None:
    """Stores written before packs hold a file per chunk: still read, gc removes the
    unused ones, fsck re-hashes them."""
    data = data_of(9_000, 11)
    blob = Digest.from_bytes(data)
    loose = store.root / "chunks" / "sha256"
    loose.mkdir(parents=True)
    entries = []
    for offset, length in cut(9_000, 3_000):
        piece = data[offset:offset + length]
        digest = Digest.from_bytes(piece)
        (loose / digest.encoded).write_bytes(piece)
        entries.append((digest, length))
    orphan = Digest.from_bytes(b"nobody's")
    (loose / orphan.encoded).write_bytes(b"nobody's")
    store.blobs.chunks._write_recipe(Recipe(blob, 9_000, tuple(entries)))
    store.meta.add_image(str(blob), mt.OCI_LAYER, 9_000, [])
    assert store.blobs.read_bytes(blob) == data
    assert len(chunk_files(store)) == 4
    report = check(store)
    assert report.clean and report.chunks_checked == 4
    gc = collect(store)
    assert (gc.chunks_removed, gc.chunk_bytes_freed) == (1, 8)
    assert sorted(os.listdir(loose)) == sorted(d.encoded for d, _ in entries)
    # a later blob sharing a loose chunk packs only what is new
    more = data[:3_000] + data_of(2_000, 12)
    chunked_blob(store, more, [(0, 3_000), (3_000, 2_000)])
    assert list(packs(store).values()) == [2_000]
