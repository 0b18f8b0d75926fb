"""Loading a ``docker save`` archive: lamina against skopeo, same run, alternating.

    .venv/bin/python bench/bench_load.py [--runs N | --quick]

The image: bench_layer's ~200 MB tree in four layers (``lamina import``), saved with
``lamina save`` as a classic docker-archive, whose layers are plain tars as ``docker
save`` writes them.

* load: ``lamina load ARCHIVE`` into a fresh store — which stores each plain layer as
  gzip, reading its tar headers and checking its diff_id on the way (#10.14, #10.5) —
  against ``skopeo copy docker-archive:ARCHIVE oci:FRESH:v1``, which also writes gzip
  layers into the OCI layout (containers/image compresses plain layers for it).
  Medians, the skopeo/lamina ratio, and the bytes each stored.
* what verifying diff_ids on pull would cost (#10.5): ``check_layer`` (decompress, read
  every tar header, sha256 of the tar) over the stored gzip layers, against the sha256 of
  the compressed blobs, which is all a pull's worker computes per byte now.
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
from bench_layer import CACHE, build_tree, lamina_cli, ratio_text, run, store_env, timed  # noqa: E402
from bench_registry import split_tree, warm_memory  # noqa: E402

from lamina.digest import Digest  # noqa: E402
from lamina.layer.verify import check_layer  # noqa: E402
from lamina.store.store import Store  # noqa: E402

IMAGE = "bench/load:v1"
LAYERS = 4


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    ap.add_argument("--warm", type=float, default=1.0,
                    help="GiB touched and freed before each timed run (default 1)")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        print("skopeo is not installed", file=sys.stderr)
        return 1
    lamina = lamina_cli()
    tree = CACHE / "tree"
    if not tree.is_dir():
        print(f"building the benchmark tree in {tree} ...", flush=True)
        build_tree(tree)
    work = Path(tempfile.mkdtemp(prefix="bench-load-", dir="/var/tmp"))
    try:
        snaps = split_tree(tree, work / "snapshots", LAYERS)
        run([lamina, "import", IMAGE, *map(str, snaps)], env=store_env(work / "origin"))
        shutil.rmtree(work / "snapshots")
        archive = work / "image.tar"
        run([lamina, "save", IMAGE, "-o", str(archive)], env=store_env(work / "origin"))
        print(f"archive: {archive.stat().st_size / 1e6:.1f} MB ({LAYERS} plain layers); "
              f"the imported image's blobs: {tree_bytes(work / 'origin' / 'blobs') / 1e6:.1f} MB")

        def load(store: Path) -> None:
            run([lamina, "load", str(archive)], env=store_env(store))

        def copy(layout: Path) -> None:
            run([skopeo, "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:v1"])

        times: dict[str, list[float]] = {"lamina": [], "skopeo": []}
        sizes: dict[str, int] = {}
        for i in range(runs):
            store = work / f"store-{i}"
            warm_memory(args.warm)
            times["lamina"].append(timed(lambda s=store: load(s)))
            sizes["lamina"] = tree_bytes(store / "blobs")
            layout = work / f"layout-{i}"
            warm_memory(args.warm)
            times["skopeo"].append(timed(lambda d=layout: copy(d)))
            sizes["skopeo"] = tree_bytes(layout / "blobs")
            index = json.loads((layout / "index.json").read_text())
            manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"]
                                   .split(":", 1)[1]).read_text())
            types = {layer["mediaType"] for layer in manifest["layers"]}
            if i < runs - 1:
                shutil.rmtree(store)
                shutil.rmtree(layout)
        lam, sko = statistics.median(times["lamina"]), statistics.median(times["skopeo"])
        print(f"load: lamina {lam:.2f} s ({sizes['lamina'] / 1e6:.1f} MB stored), skopeo "
              f"{sko:.2f} s ({sizes['skopeo'] / 1e6:.1f} MB, {', '.join(sorted(types))}): "
              f"lamina {ratio_text(sko, lam, 'skopeo')}")
        print("  runs: " + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in
                                     zip(times["lamina"], times["skopeo"], strict=True)))

        # -- what verifying diff_ids on pull would add -----------------------------------
        with Store(work / f"store-{runs - 1}") as st:
            layers = [rec for rec in st.meta.layers()]

            def check_all() -> None:
                for rec in layers:
                    with st.blobs.open(Digest.parse(rec.digest), rec.size) as r:
                        check_layer(r, Digest.parse(rec.diff_id))

            def hash_all() -> None:
                for rec in layers:
                    with st.blobs.open(Digest.parse(rec.digest), rec.size) as r:
                        while r.read(1 << 20):
                            pass
                        r.verify()

            check_s = statistics.median(timed(check_all) for _ in range(runs))
            hash_s = statistics.median(timed(hash_all) for _ in range(runs))
        gz = sum(rec.size for rec in layers)
        print(f"diff_id check of {gz / 1e6:.1f} MB of gzip layers: {check_s:.2f} s "
              f"({gz / 1e6 / check_s:.0f} MB/s of gzip) vs {hash_s:.2f} s for the sha256 a "
              f"pull computes ({check_s / hash_s:.1f}× the CPU per pulled byte)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
