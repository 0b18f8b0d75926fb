"""Creating a zstd:chunked layer: lamina against ``skopeo copy --dest-compress-format
zstd:chunked`` converting the same layer, in the same run.

    .venv/bin/python bench/bench_chunked.py [--tree DIR] [--runs N | --quick]

The tree is bench_layer's (~200 MB of /usr, cached in /var/tmp/lamina-bench/tree).
Untimed: lamina imports it once as a gzip image and saves it as an OCI layout, the
source skopeo converts.  Then, alternating (A B C D A B C D ...), medians printed:

* ``lamina import --compression zstd:chunked`` (CLI, fresh store): walk, tar, a frame per
  payload chunk, TOC, tar-split, both digests, fsync, rename, SQLite.
* ``write_tree`` (library) into a file through a HashingWriter: the same layer.
* ``skopeo copy --dest-compress-format zstd:chunked oci:SRC oci:DST``: read the gzip
  layer, inflate, split per file with its rolling sum, compress, TOC, tar-split; with
  skopeo's default level and with ``--dest-compress-level 3`` (lamina's level).
* ``lamina copy --dest-compress-format zstd:chunked oci:SRC oci:DST`` (CLI, fresh
  store): the same conversion skopeo does — read the gzip layer, inflate, frame each
  file's payload, TOC, tar-split, write the layout (#11.1).
* for reference, ``write_tree`` of the same tree as a plain zstd layer (one stream).

Ratios are skopeo / lamina (above 1: lamina is faster).  Sizes of both layers printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import (  # noqa: E402 - the sibling's helpers
    bench_tree,
    lamina_cli,
    ratio_text,
    run,
    store_env,
    timed,
)

from lamina.digest import HashingWriter  # noqa: E402
from lamina.layer import LayerOptions, write_tree  # noqa: E402


def _layer_size(layout: Path) -> int:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][-1]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return int(manifest["layers"][-1]["size"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, help="tree to pack (default: a cached copy of /usr)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        print("skopeo is not installed", file=sys.stderr)
        return 1
    lamina = lamina_cli()
    tree = bench_tree(args.tree)

    work = Path(tempfile.mkdtemp(prefix="bench-chunked-", dir="/var/tmp"))
    try:
        src_store = work / "src-store"
        run([lamina, "import", "bench/src:v1", str(tree)], env=store_env(src_store))
        src = work / "src-oci"
        run([lamina, "save", "--format", "oci", "-o", str(src), "bench/src:v1"],
            env=store_env(src_store))
        shutil.rmtree(src_store)

        n = iter(range(10_000))
        sizes: dict[str, int] = {}

        def lamina_import() -> None:
            i = next(n)
            store = work / f"store-{i}"
            out = run([lamina, "import", "--json", "--compression", "zstd:chunked",
                       f"bench:run{i}", str(tree)], env=store_env(store))
            sizes["lamina"] = int(json.loads(out)["layers"][-1]["size"])
            shutil.rmtree(store)

        def lamina_library() -> None:
            with open(work / "layer.zst", "wb") as f:
                hw = HashingWriter(f)
                write_tree(tree, hw, LayerOptions(compression="zstd:chunked"))
            sizes["lamina library"] = hw.count

        def lamina_plain_zstd() -> None:  # reference: the same tree as one zstd stream
            with open(work / "plain.zst", "wb") as f:
                hw = HashingWriter(f)
                write_tree(tree, hw, LayerOptions(compression="zstd"))
            sizes["lamina plain zstd (reference)"] = hw.count

        def lamina_copy() -> None:
            i = next(n)
            dest, store = work / f"lamina-{i}", work / f"store-{i}"
            run([lamina, "copy", "-q", "--dest-compress-format", "zstd:chunked",
                 f"oci:{src}:v1", f"oci:{dest}:v1"], env=store_env(store))
            sizes["lamina copy"] = _layer_size(dest)
            shutil.rmtree(dest)
            shutil.rmtree(store)

        def skopeo_copy(level: int | None) -> None:
            i = next(n)
            dest = work / f"skopeo-{i}"
            extra = [] if level is None else ["--dest-compress-level", str(level)]
            run([skopeo, "copy", "-q", "--dest-compress-format", "zstd:chunked", *extra,
                 f"oci:{src}:v1", f"oci:{dest}:v1"])
            sizes[f"skopeo level {level or 'default'}"] = _layer_size(dest)
            shutil.rmtree(dest)

        times: dict[str, list[float]] = {"lamina import (CLI)": [], "lamina write_tree": [],
                                         "lamina copy oci: -> oci:": [],
                                         "skopeo copy (default level)": [],
                                         "skopeo copy (level 3)": [],
                                         "lamina write_tree, plain zstd": []}
        for _ in range(args.runs):
            times["lamina import (CLI)"].append(timed(lamina_import))
            times["skopeo copy (default level)"].append(timed(lambda: skopeo_copy(None)))
            times["lamina write_tree"].append(timed(lamina_library))
            times["lamina copy oci: -> oci:"].append(timed(lamina_copy))
            times["skopeo copy (level 3)"].append(timed(lambda: skopeo_copy(3)))
            times["lamina write_tree, plain zstd"].append(timed(lamina_plain_zstd))

        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nmake a zstd:chunked layer (medians of {args.runs}, alternating):")
        for name, value in med.items():
            print(f"  {name:30s} {value:7.2f} s   ({', '.join(f'{t:.2f}' for t in times[name])})")
        print()
        for ours in ("lamina import (CLI)", "lamina write_tree", "lamina copy oci: -> oci:"):
            for peer in ("skopeo copy (default level)", "skopeo copy (level 3)"):
                print(f"  {ours}: {ratio_text(med[peer], med[ours], peer)}")
        print("\nlayer sizes:")
        for name, value in sizes.items():
            print(f"  {name:30s} {value / 1e6:8.1f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
