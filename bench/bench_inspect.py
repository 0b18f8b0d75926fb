"""lamina layers / efficiency on a ~200 MB image against ``tar -tvzf`` of its layers.

    .venv/bin/python bench/bench_inspect.py [--tree DIR] [--runs N | --quick]

The image: two layers imported with ``lamina import`` into a store kept at
/var/tmp/lamina-bench/inspect-store (made once, reused):

* layer 1 — the ~200 MB tree of many small files bench_layer.py builds (and caches in
  /var/tmp/lamina-bench/tree);
* layer 2 — a snapshot that rewrites 200 files with new bytes, re-writes 200 with the
  same bytes and another mode (chmod-only: ``efficiency`` must hash them), and deletes a
  directory and 200 more files.

Timed, alternating (floor, layers, efficiency, floor, ...), each a subprocess with its
output sent to /dev/null:

| row | what |
|---|---|
| ``tar -tvzf`` (floor) | GNU tar listing every layer blob in turn: gunzip + headers |
| ``lamina layers --json`` | every layer's change tree: headers only, digests verified |
| ``lamina efficiency --json`` | the same pass, then the chmod-only candidates hashed |
|                              | in a second pass over the layers that hold them      |

Medians and lamina / floor ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import CACHE, build_tree, lamina_cli, tree_stats  # noqa: E402

STORE = CACHE / "inspect-store"
SNAPS = CACHE / "inspect-snapshots"
IMAGE = "bench/inspect:latest"


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink() and p.stat().st_size > 0:
                out.append(p)
    return out


def make_image(tree: Path) -> None:
    """Import tree + its modified copy as a two-layer image (once)."""
    env = {**os.environ, "LAMINA_ROOT": str(STORE), "SOURCE_DATE_EPOCH": "1700000000"}
    if STORE.exists():
        probe = subprocess.run([lamina_cli(), "history", "--json", IMAGE], env=env,
                               capture_output=True)
        if probe.returncode == 0:
            return
        shutil.rmtree(STORE)
    shutil.rmtree(SNAPS, ignore_errors=True)
    SNAPS.mkdir(parents=True)
    upper = SNAPS / "upper"
    # hard links: the copy costs nothing and unchanged files are the same inodes
    subprocess.run(["cp", "-al", str(tree), str(upper)], check=True)
    files = _files(upper)
    step = max(1, len(files) // 600)
    picked = files[::step][:600]
    rewrite, chmod, delete = picked[:200], picked[200:400], picked[400:600]
    for p in rewrite:
        st = p.stat()
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data[::-1] + b"!")
        os.utime(p, (st.st_atime, st.st_mtime))
    for p in chmod:
        st = p.stat()
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data)
        os.chmod(p, 0o600 if st.st_mode & 0o777 != 0o600 else 0o640)
        os.utime(p, (st.st_atime, st.st_mtime))
    for p in delete:
        p.unlink()
    subdirs = sorted(d for d in upper.rglob("*") if d.is_dir() and not d.is_symlink())
    shutil.rmtree(subdirs[len(subdirs) // 2])
    subprocess.run([lamina_cli(), "import", IMAGE, str(tree), str(upper)], env=env,
                   check=True, capture_output=True)
    shutil.rmtree(SNAPS)


def layer_blobs() -> list[Path]:
    env = {**os.environ, "LAMINA_ROOT": str(STORE)}
    doc = json.loads(subprocess.run([lamina_cli(), "inspect", IMAGE], env=env, check=True,
                                    capture_output=True, text=True).stdout)[0]
    return [STORE / "blobs" / "sha256" / x["digest"].split(":")[1]
            for x in doc["Manifest"]["layers"]]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=CACHE / "tree")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    if not args.tree.exists():
        print(f"building the tree in {args.tree} (once)...", flush=True)
        build_tree(args.tree)
    entries, size = tree_stats(args.tree)
    make_image(args.tree)
    blobs = layer_blobs()
    env = {**os.environ, "LAMINA_ROOT": str(STORE)}
    lam = lamina_cli()
    print(f"image: {entries} entries, {size / 1e6:.0f} MB of files in the tree; layers "
          f"{', '.join(f'{b.stat().st_size / 1e6:.1f} MB' for b in blobs)} (gzip)")
    rows: dict[str, list[float]] = {"tar -tvzf (floor)": [], "lamina layers --json": [],
                                    "lamina efficiency --json": []}
    for _ in range(runs):
        rows["tar -tvzf (floor)"].append(
            sum(timed(["tar", "-tvzf", str(b)]) for b in blobs))
        rows["lamina layers --json"].append(timed([lam, "layers", "--json", IMAGE], env))
        rows["lamina efficiency --json"].append(
            timed([lam, "efficiency", "--json", IMAGE], env))
    floor = statistics.median(rows["tar -tvzf (floor)"])
    print(f"\n{'':28}{'median':>10}   vs floor   ({runs} runs, alternating)")
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"{name:28}{med:>9.2f}s   {med / floor:>5.2f}\u00d7")
    report = json.loads(subprocess.run([lam, "efficiency", "--json", IMAGE], env=env,
                                       check=True, capture_output=True, text=True).stdout)
    print(f"\nefficiency of the image: {report['score'] * 100:.2f}%, wasted "
          f"{report['wasted']} bytes (overwritten {report['wasted_by']['overwritten']}, "
          f"metadata-only {report['wasted_by']['metadata_only']}, deleted "
          f"{report['wasted_by']['deleted']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
