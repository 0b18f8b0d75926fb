"""What keeping a blob as chunks costs (store/chunks.py): writing and reading a blob kept
as chunks + recipe against the same blob kept whole, in one run.

    .venv/bin/python bench/bench_chunkstore.py [--size MB] [--frame KB] [--runs N | --quick]
                                               [--store-dir DIR]

A blob of ``--size`` MB of random bytes (a compressed layer does not compress further) is
cut into spans of random lengths around ``--frame`` KB (zstd:chunked cuts a layer at each
file's payload: ~2,000 files in 100 MB gives ~50 KB).  Alternating whole, chunks, whole,
chunks, ... (bench/README.md), each run in a fresh store:

    put       a BlobWriter filled from the file, finished (digest checked) and published:
              whole = fsync + rename; chunks = every span hashed, the new ones in one
              pack (all new here: the ingest file itself is linked in) plus its index
              and the recipe
    read      the blob read through ``BlobStore.open`` and verified (sha256 of the whole),
              as push, save and unpack read it; the page cache is warm for both
    raw read  the same without hashing, in 1 MiB reads (``open_file``): the reassembly cost
              alone; the peer is ``cat`` of the blob file (whole) or of the pack files in
              recipe order (chunks), into a pipe
    range     1,000 reads of 64 KiB at random offsets (``pread``, as ``lamina serve``
              answers Range requests)

Medians and chunks/whole ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lamina.digest import CHUNK, Digest
from lamina.store.blobs import BlobStore
from lamina.store.chunks import ChunkedFile


def make_blob(where: Path, size: int, frame: int) -> tuple[Path, Digest, list[tuple[int, int]]]:
    rnd = random.Random(11)
    path = where / "blob"
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(rnd.randbytes(n))
            left -= n
    spans: list[tuple[int, int]] = []
    at = 0
    while at < size:
        n = min(max(1, int(rnd.expovariate(1 / frame))), size - at)
        spans.append((at, n))
        at += n
    digest = Digest("sha256", _sha256(path))
    return path, digest, spans


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            h.update(data)
    return h.hexdigest()


def put(store: BlobStore, src: Path, digest: Digest, spans: list[tuple[int, int]] | None
        ) -> None:
    with open(src, "rb") as f, store.writer() as w:
        w.fill_from(f)
        w.finish(digest, src.stat().st_size)
        w.publish(spans)


def read_verified(store: BlobStore, digest: Digest) -> None:
    buf = bytearray(CHUNK)
    with store.open(digest) as r:
        while r.readinto(buf):
            pass
        r.verify()


def read_raw(store: BlobStore, digest: Digest) -> None:
    buf = bytearray(CHUNK)
    f = store.open_file(digest)
    with f:
        while f.readinto(buf):
            pass


def cat_peer(store: BlobStore, digest: Digest) -> None:
    chunked = store.chunked(digest)
    files = [str(store.path(digest))] if chunked is None else list(dict.fromkeys(
        str(where.path) for d, _ in chunked.recipe.chunks
        if (where := store.chunks.locate(d)) is not None))
    # xargs splits a long list the way a shell would have to
    with subprocess.Popen(["xargs", "-0", "cat"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"\0".join(f.encode() for f in files))
        proc.stdin.close()
        while proc.stdout.read(CHUNK):
            pass


def ranges(store: BlobStore, digest: Digest, size: int) -> None:
    rnd = random.Random(5)
    chunked = store.chunked(digest)
    if chunked is None:
        fd = os.open(store.path(digest), os.O_RDONLY)
        try:
            for _ in range(1000):
                os.pread(fd, 65536, rnd.randrange(size))
        finally:
            os.close(fd)
        return
    with chunked:
        for _ in range(1000):
            chunked.pread(65536, rnd.randrange(size))


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100, help="blob size in MB (default 100)")
    ap.add_argument("--frame", type=int, default=50, help="mean span in KB (default 50)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one small run (smoke test)")
    ap.add_argument("--store-dir", type=Path, default=Path("/var/tmp"),
                    help="where the stores go (default /var/tmp: a disk, not a tmpfs)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.size = 1, 10
    size = args.size * 1_000_000
    args.store_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-chunks-", dir=args.store_dir))
    try:
        src, digest, spans = make_blob(work, size, args.frame * 1000)
        print(f"blob: {size / 1e6:.0f} MB, {len(spans)} spans (mean "
              f"{size / len(spans) / 1000:.1f} KB), stores in {args.store_dir}")
        figures: dict[str, dict[str, list[float]]] = {}
        for run in range(args.runs):
            for kind in ("whole", "chunks"):
                root = work / f"{kind}-{run}"
                store = BlobStore(root)
                row = figures.setdefault(kind, {})
                cuts = spans if kind == "chunks" else None
                row.setdefault("put", []).append(timed(
                    lambda s=store, c=cuts: put(s, src, digest, c)))
                assert isinstance(store.chunked(digest), ChunkedFile) == (kind == "chunks")
                read_verified(store, digest)      # warm the page cache for both
                row.setdefault("read", []).append(timed(
                    lambda s=store: read_verified(s, digest)))
                row.setdefault("raw read", []).append(timed(lambda s=store: read_raw(s, digest)))
                row.setdefault("cat (peer)", []).append(timed(
                    lambda s=store: cat_peer(s, digest)))
                row.setdefault("range x1000", []).append(timed(
                    lambda s=store: ranges(s, digest, size)))
                shutil.rmtree(root)
        print(f"{'':14} {'whole':>9} {'chunks':>9} {'chunks/whole':>13}")
        for what in figures["whole"]:
            a = statistics.median(figures["whole"][what])
            b = statistics.median(figures["chunks"][what])
            print(f"{what:14} {a:8.3f}s {b:8.3f}s {b / a:12.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
