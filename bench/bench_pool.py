"""Snapshots of N variant images with and without the file pool, beside `umoci unpack`.

    sudo .venv/bin/python bench/bench_pool.py [--variants N] [--files N] [--runs N | --quick]
                                              [--store-dir DIR]

The images: a base tree (``--files`` files, ~40 MB at the default 2,000, mostly small,
a few up to 1 MB; made once in /var/tmp/lamina-bench) and N variants of it, each with
``--changed`` files rewritten, each imported as an image of one layer under the same
SOURCE_DATE_EPOCH.  N different layers: Docker, umoci and lamina without the pool unpack
N full copies; with the pool the files the variants have in common are kept once.

Each run times, alternating (bench/README.md), into emptied stores / fresh directories:

    pool    Snapshotter(store).ensure() of every variant (what `run`/`build` do)
    plain   Snapshotter(store, share_files=False).ensure() of every variant
    umoci   `umoci unpack` of every variant (from `lamina save --format oci`) into a
            bundle each

and measures the disk space each leaves: allocated blocks (st_blocks) of every inode
once -- snapshots + pool for lamina, the bundles' rootfs for umoci (its mtree files
left out) -- and the logical bytes (every regular file's size, per path).  Medians and
ratios are printed.  The store directory defaults to /dev/shm, a tmpfs: the ext4 here
slows file creation for minutes after big deletes, which would swamp the figures.
Needs root (snapshots hold device nodes; umoci keeps owners).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lamina.build.importer import ImportOptions, import_snapshots
from lamina.run.snapshots import Snapshotter
from lamina.store.gc import collect
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import resolve_image

CACHE = Path("/var/tmp/lamina-bench")
EPOCH = 1_700_000_000
PER_DIR = 50


def _bytes(seed: int, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 4   # compressible 4:1, like program files more or less
    return bytes(out[:size])


def _size(i: int) -> int:
    # Mostly small files, one in 50 of 0.5-1 MB: ~20 KB on average.
    return 500_000 + (i * 7919) % 500_000 if i % 50 == 7 else 512 + (i * 104_729) % 16_000


def base_tree(n_files: int) -> Path:
    root = CACHE / f"pool-tree-{n_files}"
    if (root / ".complete").exists():
        return root / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    rootfs = root / "rootfs"
    for i in range(n_files):
        d = rootfs / f"d{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i % PER_DIR:02d}").write_bytes(_bytes(i, _size(i)))
    (root / ".complete").write_text("")
    return rootfs


def make_variants(base: Path, work: Path, n: int, changed: int, n_files: int) -> list[Path]:
    trees = []
    for v in range(n):
        tree = work / f"variant-{v}"
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(tree)], check=True)
        for k in range(changed):
            i = (v * 977 + k * 131) % n_files
            (tree / f"d{i // PER_DIR:03d}" / f"f{i % PER_DIR:02d}").write_bytes(
                _bytes(1_000_000 + v * 1000 + k, _size(i)))
        trees.append(tree)
    return trees


def disk_usage(tops: list[Path], extra: list[Path]) -> tuple[int, int]:
    """(allocated bytes of ``tops`` and ``extra``, each inode once; logical bytes of the
    regular files in ``tops``, per path)."""
    seen: set[tuple[int, int]] = set()
    allocated = logical = 0
    for top in tops + extra:
        counted = top in tops
        for dirpath, dirs, files in os.walk(top):
            for name in dirs + files:
                st = os.lstat(os.path.join(dirpath, name))
                if counted and name not in dirs and (st.st_mode & 0o170000) == 0o100000:
                    logical += st.st_size
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    allocated += st.st_blocks * 512
    return allocated, logical


def run_lamina(store: Store, refs: list[str], share: bool) -> tuple[float, int, int]:
    source = StoreTransport(store)
    images = [resolve_image(source, source.resolve(r)) for r in refs]
    t = time.perf_counter()
    snap = Snapshotter(store, share_files=share)
    for image in images:
        snap.ensure(source, image.manifest.layers, image.config.diff_ids)
    took = time.perf_counter() - t
    allocated, logical = disk_usage([store.root / "snapshots"], [store.root / "pool"])
    report = collect(store)   # no image owns them: every snapshot and pool entry goes
    assert len(report.snapshots_removed) == len(refs), report
    return took, allocated, logical


def run_umoci(layout: Path, tags: list[str], work: Path) -> tuple[float, int, int]:
    bundles = Path(tempfile.mkdtemp(prefix="umoci-", dir=work))
    t = time.perf_counter()
    for tag in tags:
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}",
                        str(bundles / tag)], check=True, capture_output=True)
    took = time.perf_counter() - t
    allocated, logical = disk_usage([bundles / tag / "rootfs" for tag in tags], [])
    shutil.rmtree(bundles)
    return took, allocated, logical


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--changed", type=int, default=5, help="files rewritten per variant")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run of 3 variants")
    ap.add_argument("--store-dir", default="/dev/shm" if os.path.isdir("/dev/shm")
                    else str(CACHE))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_pool: needs root (snapshots hold device nodes)", file=sys.stderr)
        return 1
    if shutil.which("umoci") is None:
        print("bench_pool: umoci is not installed", file=sys.stderr)
        return 1
    variants = 3 if args.quick else args.variants
    runs = 1 if args.quick else args.runs
    CACHE.mkdir(parents=True, exist_ok=True)
    base = base_tree(args.files)
    work = Path(tempfile.mkdtemp(prefix="lamina-poolbench-", dir=args.store_dir))
    try:
        trees = make_variants(base, work, variants, args.changed, args.files)
        refs = [f"bench/pool:v{v}" for v in range(variants)]
        root = work / "store"
        with Store(root) as store:
            for ref, tree in zip(refs, trees, strict=True):
                import_snapshots(store, ref, [tree], ImportOptions(source_date_epoch=EPOCH))
        for tree in trees:
            shutil.rmtree(tree)
        layout = work / "layout"
        env = {**os.environ, "LAMINA_ROOT": str(root)}
        lamina = str(Path(sys.executable).parent / "lamina")
        subprocess.run([lamina, "save", "--format", "oci", "-o", str(layout), *refs],
                       check=True, env=env, capture_output=True)
        results: dict[str, list[tuple[float, int, int]]] = {"pool": [], "plain": [],
                                                           "umoci": []}
        with Store(root) as store:
            for _ in range(runs):
                results["pool"].append(run_lamina(store, refs, True))
                results["plain"].append(run_lamina(store, refs, False))
                results["umoci"].append(run_umoci(layout, [r.split(":")[1] for r in refs],
                                                  work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: tuple(statistics.median(r[i] for r in rs) for i in range(3))
           for k, rs in results.items()}
    mb = 1e6
    print(f"{variants} variant images of {args.files} files, {args.changed} changed each; "
          f"medians of {runs} alternating runs; store on {args.store_dir}")
    print(f"{'':>7} {'seconds':>8} {'disk MB':>8} {'logical MB':>11} "
          f"{'disk vs pool':>13} {'time vs pool':>13}")
    for k in ("pool", "plain", "umoci"):
        t, disk, logical = med[k]
        print(f"{k:>7} {t:8.2f} {disk / mb:8.1f} {logical / mb:11.1f} "
              f"{disk / med['pool'][1]:12.2f}x {t / med['pool'][0]:12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
