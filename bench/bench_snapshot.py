"""The cost of a RUN step's filesystem: overlay snapshotter against walk, in one run.

    sudo .venv/bin/python bench/bench_snapshot.py [--files N,N,...] [--runs N | --quick]
                                                  [--store-dir DIR]

For each tree size (default 3,000 and 30,000 small files in 100-file directories), an
image of one layer holding the tree is imported into a fresh store.  Then, alternating
overlay, walk, overlay, walk, ... (bench/README.md), one RUN-like cycle is timed:

    open    open_rootfs(mode): overlay mounts the (already extracted) snapshots under a
            fresh upper dir; walk applies the layer into ``base`` and copies it to ``work``
    change  one file of the tree is appended to (the "RUN"; done from here so that the
            sandbox, the same for both, is not in the figures)
    diff    rootfs.changes(epoch) + write_changeset (gzip) to a hashing sink: the layer
    close   unmount / remove

The overlay figures should stay flat as the tree grows (they depend on the change),
the walk figures grow with it.  The one-time extraction of the overlay snapshots is
reported on its own.  Medians and walk/overlay ratios are printed.  Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lamina.build.importer import ImportOptions, import_snapshots
from lamina.digest import HashingWriter
from lamina.layer import LayerOptions, write_changeset
from lamina.run.rootfs import open_rootfs
from lamina.run.snapshots import Snapshotter
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import resolve_image

CACHE = Path("/var/tmp/lamina-bench")
EPOCH = 1_700_000_000
PER_DIR = 100


def make_tree(n_files: int) -> Path:
    """``n_files`` files of ~100 bytes in directories of PER_DIR, cached between runs."""
    root = CACHE / f"snapshot-tree-{n_files}"
    done = root / ".complete"
    if done.exists():
        return root / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    rootfs = root / "rootfs"
    for i in range(n_files):
        d = rootfs / f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i % PER_DIR:03d}").write_bytes(f"file {i}\n".encode() * 12)
    done.write_text("")
    return rootfs


def cycle(store: Store, mode: str, epoch: int) -> dict[str, float]:
    source = StoreTransport(store)
    image = resolve_image(source, source.resolve("bench/tree"))
    t0 = time.perf_counter()
    rootfs = open_rootfs(store, source, image, mode)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    try:
        with open(rootfs.path / "d0000" / "f000", "ab") as f:
            f.write(b"changed by the RUN\n")
        t2 = time.perf_counter()
        changes = rootfs.changes(epoch)
        sink = HashingWriter()
        write_changeset(changes, sink, LayerOptions(source_date_epoch=epoch))
        t3 = time.perf_counter()
        assert len(changes) == 2, changes.changes  # d0000/ and d0000/f000
    finally:
        rootfs.close()
    t4 = time.perf_counter()
    return {"open": t1 - t0, "change": t2 - t1, "diff": t3 - t2, "close": t4 - t3,
            "total": t4 - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="3000,30000", help="tree sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one run of each, 3000 files")
    ap.add_argument("--store-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else str(CACHE),
                    help="where the stores live (default: /dev/shm, a tmpfs: the ext4 here "
                    "slows file creation after big deletes, which would swamp the walk figures)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_snapshot: needs root (overlay mounts)", file=sys.stderr)
        return 1
    sizes = [3000] if args.quick else [int(x) for x in args.files.split(",")]
    runs = 1 if args.quick else args.runs
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        tree = make_tree(n)
        work = Path(tempfile.mkdtemp(prefix="lamina-snapstore-", dir=args.store_dir))
        try:
            with Store(work / "store") as store:
                import_snapshots(store, "bench/tree", [tree],
                                 ImportOptions(source_date_epoch=EPOCH))
                source = StoreTransport(store)
                image = resolve_image(source, source.resolve("bench/tree"))
                t = time.perf_counter()
                Snapshotter(store).ensure(source, image.manifest.layers, image.config.diff_ids)
                extract = time.perf_counter() - t
                results: dict[str, list[dict[str, float]]] = {"overlay": [], "walk": []}
                for _ in range(runs):
                    for mode in ("overlay", "walk"):
                        results[mode].append(cycle(store, mode, EPOCH))
            med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                   for m, rs in results.items()}
            rows.append((n, extract, med))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"snapshot + changeset of a RUN touching one file; medians of {runs} alternating "
          "runs (seconds)")
    print(f"{'files':>7} {'mode':>8} {'open':>8} {'diff':>8} {'close':>8} {'total':>8}"
          f" {'walk/overlay':>13}")
    for n, extract, med in rows:
        for mode in ("overlay", "walk"):
            m = med[mode]
            ratio = med["walk"]["total"] / med["overlay"]["total"] if mode == "walk" else None
            print(f"{n:>7} {mode:>8} {m['open']:8.3f} {m['diff']:8.3f} {m['close']:8.3f} "
                  f"{m['total']:8.3f} {'' if ratio is None else f'{ratio:12.1f}x':>13}")
        print(f"{n:>7} {'(once)':>8} overlay snapshot extraction: {extract:.3f} s")
    if len(rows) > 1:
        (n0, _, m0), (n1, _, m1) = rows[0], rows[-1]
        grow = {m: m1[m]["total"] / m0[m]["total"] for m in ("overlay", "walk")}
        print(f"tree x{n1 / n0:.0f}: overlay total x{grow['overlay']:.2f}, "
              f"walk total x{grow['walk']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
