"""Layer creation and extraction: lamina against umoci (and GNU tar) in the same run.

    .venv/bin/python bench/bench_layer.py [--tree DIR] [--runs N | --quick] [--target-dir DIR]

Without ``--tree`` a ~200 MB tree of many small files is copied once from /usr into
/var/tmp/lamina-bench/tree and reused by later runs.  Runs alternate (A B A B ...), as
bench/README.md asks; medians and lamina/peer ratios are printed.

* create: ``lamina.layer.write_tree`` (gzip, isal level 1, both sha256s: diff_id inside,
  the compressed digest through a HashingWriter, written to a file) in this process,
  against ``umoci repack`` of the same tree placed in a bundle's rootfs; lamina's zstd
  (level 3) for reference.  End to end: ``lamina import NAME TREE`` run as a subprocess
  into a fresh store (``LAMINA_ROOT=/var/tmp/lamina-bench/stores/<n>``, the filesystem of
  the tree): process start, walk, tar, gzip, both hashes, fsync and rename into the store,
  SQLite records -- what a user runs, against what ``umoci repack`` does.
* unpack: ``lamina.layer.apply_layer`` (diff_id checked) against ``umoci unpack`` and
  ``tar -xzf``, all of the same umoci-made layer, each into a fresh directory on a tmpfs
  (/dev/shm by default: the ext4 here slows file creation after big deletes).  lamina
  also applies its own layer.  End to end: ``lamina unpack NAME DIR`` as a subprocess,
  of the image ``lamina import`` made and of umoci's image loaded into a lamina store.

Stores are few large files; they are kept until the end and deleted then, like the
umoci layout.  ``--quick`` is one run of each, for smoke testing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lamina.digest import Digest, HashingWriter
from lamina.layer import LayerOptions, apply_layer, write_tree

CACHE = Path("/var/tmp/lamina-bench")
SOURCES = [
    "/usr/lib/python3.11",
    "/usr/share/perl",
    "/usr/share/vim",
    "/usr/share/i18n",
    "/usr/share/zoneinfo",
    "/usr/share/mime",
    "/usr/share/cmake-3.25",
    "/usr/lib/x86_64-linux-gnu",
]
TARGET_BYTES = 200 * 1000 * 1000
MAX_FILE = 8 << 20  # many small files, like a distribution's base layer; no libLLVM


def build_tree(dest: Path, sources: list[str] = SOURCES, target: int = TARGET_BYTES,
               max_file: int = MAX_FILE) -> None:
    """Copy files (none over ``max_file``) from ``sources`` until ``target`` bytes (by
    default ~200 MB, none over 8 MiB), keeping symlinks."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    total = 0
    for src in sources:
        if not os.path.isdir(src):
            continue
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, "/")
            os.makedirs(tmp / rel, exist_ok=True)
            for name in sorted(filenames):
                s = os.path.join(dirpath, name)
                d = tmp / rel / name
                st = os.lstat(s)
                if os.path.islink(s):
                    os.symlink(os.readlink(s), d)
                elif os.path.isfile(s) and st.st_size <= max_file:
                    shutil.copy2(s, d)
                    total += st.st_size
                if total >= target:
                    break
            if total >= target:
                break
        if total >= target:
            break
    tmp.rename(dest)


def tree_stats(root: Path) -> tuple[int, int]:
    entries = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entries += 1
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                size += st.st_size if os.path.isfile(os.path.join(dirpath, name)) else 0
    return entries, size


def bench_tree(given: Path | None) -> Path:
    """The tree to measure: ``given`` (--tree), else the cached benchmark tree, built on
    first use; says what it holds."""
    tree = given or CACHE / "tree"
    if given is None and not tree.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"building the benchmark tree in {tree} ...", flush=True)
        build_tree(tree)
    entries, size = tree_stats(tree)
    print(f"tree: {tree}  {entries} entries, {size / 1e6:.1f} MB of file data")
    return tree


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"{' '.join(cmd)} failed ({e.returncode}):\n{e.stderr}") from None
    return proc.stdout


def lamina_cli() -> str:
    """The lamina console script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "lamina"
    if beside.is_file():
        return str(beside)
    found = shutil.which("lamina")
    if found is None:
        raise SystemExit("the lamina CLI is not installed (make install)")
    return found


def store_env(root: Path) -> dict[str, str]:
    return {**os.environ, "LAMINA_ROOT": str(root)}


def ratio_text(peer_s: float, ours_s: float, peer: str) -> str:
    r = peer_s / ours_s
    if r >= 1:
        return f"{r:.2f}\u00d7 faster than {peer}"
    return f"{1 / r:.2f}\u00d7 slower than {peer}"


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, help="tree to pack (default: a cached copy of /usr)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    ap.add_argument("--target-dir", type=Path, default=Path("/dev/shm"), help="unpack here")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    lamina = lamina_cli()
    if shutil.which("umoci") is None:
        print("umoci is not installed", file=sys.stderr)
        return 1

    tree = bench_tree(args.tree)

    work = Path(tempfile.mkdtemp(prefix="bench-layer-", dir="/var/tmp"))
    # Stores on the tree's filesystem (fsync and rename cost what they cost there).
    stores = CACHE / "stores"
    shutil.rmtree(stores, ignore_errors=True)  # left by an interrupted run
    stores.mkdir(parents=True)
    unpack_root = Path(tempfile.mkdtemp(prefix="bench-unpack-", dir=args.target_dir))
    try:
        layout = work / "oci"
        bundle = work / "bundle"
        run(["umoci", "init", "--layout", str(layout)])
        run(["umoci", "new", "--image", f"{layout}:base"])
        run(["umoci", "unpack", "--image", f"{layout}:base", str(bundle)])
        rootfs = bundle / "rootfs"
        shutil.rmtree(rootfs)
        # umoci packs what is in the rootfs; a copy keeps owners, modes and links.
        run(["cp", "-a", str(tree), str(rootfs)])

        lamina_out = work / "lamina-layer.tar.gz"
        lamina_info: dict[str, object] = {}

        def lamina_create() -> None:
            with open(lamina_out, "wb") as f:
                hw = HashingWriter(f)
                info = write_tree(rootfs, hw, LayerOptions())
                lamina_info.update(diff_id=info.diff_id, digest=hw.digest, size=hw.count)

        zstd_out = work / "lamina-layer.tar.zst"
        zstd_size: list[int] = []

        def lamina_create_zstd() -> None:
            with open(zstd_out, "wb") as f:
                hw = HashingWriter(f)
                write_tree(rootfs, hw, LayerOptions(compression="zstd"))
                zstd_size.append(hw.count)

        counter = iter(range(1000))

        def umoci_repack() -> None:
            run(["umoci", "repack", "--image", f"{layout}:run{next(counter)}", str(bundle)])

        import_n = iter(range(1000))
        import_size: list[int] = []

        def lamina_import() -> None:
            n = next(import_n)
            out = run(
                [lamina, "import", "--json", f"bench:run{n}", str(rootfs)],
                env=store_env(stores / str(n)),
            )
            import_size.append(int(json.loads(out)["layers"][-1]["size"]))

        create: dict[str, list[float]] = {
            "lamina import (CLI)": [],
            "umoci repack": [],
            "lamina write_tree (library)": [],
            "lamina write_tree (zstd)": [],
        }
        for _ in range(args.runs):
            create["lamina import (CLI)"].append(timed(lamina_import))
            create["umoci repack"].append(timed(umoci_repack))
            create["lamina write_tree (library)"].append(timed(lamina_create))
            create["lamina write_tree (zstd)"].append(timed(lamina_create_zstd))

        # The umoci layer: the last layer of the last repacked image.
        index = json.loads((layout / "index.json").read_text())
        manifest_digest = Digest.parse(index["manifests"][-1]["digest"])
        manifest = json.loads((layout / "blobs/sha256" / manifest_digest.encoded).read_text())
        config = json.loads(
            (
                layout / "blobs/sha256" / Digest.parse(manifest["config"]["digest"]).encoded
            ).read_text()
        )
        umoci_layer = (
            layout / "blobs/sha256" / Digest.parse(manifest["layers"][-1]["digest"]).encoded
        )
        umoci_diff_id = Digest.parse(config["rootfs"]["diff_ids"][-1])
        umoci_size = umoci_layer.stat().st_size
        last_tag = f"run{args.runs - 1}"

        # umoci's image in a lamina store too (untimed), so `lamina unpack` also runs on
        # the very layer umoci and tar extract.
        umoci_store = stores / "umoci"
        single = work / "oci-single"
        run(["umoci", "init", "--layout", str(single)])
        shutil.rmtree(single / "blobs")
        shutil.copytree(layout / "blobs", single / "blobs")
        entry = dict(index["manifests"][-1])
        entry["annotations"] = {"org.opencontainers.image.ref.name": "umoci"}
        (single / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": [entry]})
        )
        run([lamina, "load", "--name", "bench-umoci:latest", str(single)],
            env=store_env(umoci_store))
        images = run([lamina, "images", "--json"], env=store_env(umoci_store))
        umoci_ref = json.loads(images)[0]["reference"]

        n = iter(range(10000))

        def fresh() -> Path:
            return unpack_root / f"t{next(n)}"

        def lamina_apply_umoci_layer() -> None:
            dest = fresh()
            with open(umoci_layer, "rb") as f:
                apply_layer(f, dest, umoci_diff_id)
            timings_cleanup.append(dest)

        def lamina_apply_own_layer() -> None:
            dest = fresh()
            with open(lamina_out, "rb") as f:
                apply_layer(f, dest, lamina_info["diff_id"])  # type: ignore[arg-type]
            timings_cleanup.append(dest)

        def umoci_unpack() -> None:
            dest = fresh()
            run(["umoci", "unpack", "--image", f"{layout}:{last_tag}", str(dest)])
            timings_cleanup.append(dest)

        def lamina_unpack_cli(store: Path, ref: str) -> Callable[[], None]:
            def go() -> None:
                dest = fresh()
                run([lamina, "unpack", ref, str(dest)], env=store_env(store))
                timings_cleanup.append(dest)

            return go

        def tar_xzf() -> None:
            dest = fresh()
            dest.mkdir()
            run(["tar", "-xzf", str(umoci_layer), "-C", str(dest)])
            timings_cleanup.append(dest)

        timings_cleanup: list[Path] = []
        fns = {
            "lamina unpack (CLI, own image)": lamina_unpack_cli(stores / "0", "bench:run0"),
            "umoci unpack": umoci_unpack,
            "tar -xzf": tar_xzf,
            "lamina unpack (CLI, umoci image)": lamina_unpack_cli(umoci_store, umoci_ref),
            "lamina apply (umoci layer)": lamina_apply_umoci_layer,
            "lamina apply (lamina layer)": lamina_apply_own_layer,
        }
        unpack: dict[str, list[float]] = {name: [] for name in fns}
        # One untimed extraction first, so that touching reclaimed memory (bench/README.md)
        # is not charged to whichever row happens to come first.
        tar_xzf()
        while timings_cleanup:
            drop(timings_cleanup.pop())
        for _ in range(args.runs):
            for name, fn in fns.items():
                unpack[name].append(timed(fn))
                # Deleting on tmpfs is cheap and keeps memory in check; not timed.
                while timings_cleanup:
                    drop(timings_cleanup.pop())

        def report(title: str, results: dict[str, list[float]], peers: list[str]) -> None:
            print(f"\n{title} (median of {args.runs}; runs alternate)")
            bases = {p: statistics.median(results[p]) for p in peers}
            for name, times in results.items():
                med = statistics.median(times)
                runs = " ".join(f"{t:.2f}" for t in times)
                ratios = (
                    ""
                    if name in peers or not name.startswith("lamina")
                    else "   " + "; ".join(ratio_text(b, med, p) for p, b in bases.items())
                )
                print(f"  {name:34s} {med:6.2f} s   [{runs}]{ratios}")

        report("create gzip layer", create, ["umoci repack"])
        lamina_size = int(str(lamina_info["size"]))
        print(
            f"  compressed size: lamina import {import_size[-1] / 1e6:.1f} MB,"
            f" write_tree {lamina_size / 1e6:.1f} MB, umoci {umoci_size / 1e6:.1f} MB"
            f" (lamina/umoci = {import_size[-1] / umoci_size:.3f});"
            f" lamina zstd {zstd_size[-1] / 1e6:.1f} MB"
        )
        report(
            f"unpack into fresh dirs on {args.target_dir}", unpack, ["umoci unpack", "tar -xzf"]
        )
        print(f"\nlamina diff_id {lamina_info['diff_id']}, umoci diff_id {umoci_diff_id}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(unpack_root, ignore_errors=True)
        shutil.rmtree(stores, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
