"""Working on the stack (#14): incremental save/load across an air gap, and deep stacks.

    .venv/bin/python bench/bench_airgap.py [--runs N | --quick]

Air gap.  Release 1 is bench_layer's ~200 MB tree in four layers (``lamina import``);
release 2 is the same four layers and a fifth holding a new 5 MB file.  Store B holds
release 1 (loaded from a full save); it wrote its inventory.  Timed, alternating:

* lamina incremental: ``lamina save app:2 --exclude inv.json -o x.tar`` in store A,
  then ``lamina load x.tar`` in store B;
* lamina full: ``lamina save app:2 --format oci-archive`` and ``lamina load`` of it;
* skopeo full: ``skopeo copy oci:A:2 oci-archive:full.tar``, then ``skopeo copy
  oci-archive:full.tar oci:B:2`` into a layout holding release 1 (skopeo has no way to
  leave out what the far side has: the archive is the whole image).

B is put back to release 1 after each run (untimed).  Printed: archive sizes, medians,
and skopeo / lamina-incremental for bytes and time.

Deep stacks.  ``lamina run --snapshotter overlay IMAGE true`` on a 500-layer image (a
busybox layer and 499 small layers written straight into the store) against a 50-layer
one made the same way, in a fresh store each run: the first run of the 500-layer image
extracts the top 100 layers and merges the bottom 400 into one snapshot
(run/snapshots.py); the second finds them all.  Printed: medians and the ratios
500 / 50 layers, first and second run.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import CACHE, build_tree, lamina_cli, run, store_env, timed  # noqa: E402
from bench_registry import split_tree, warm_memory  # noqa: E402

from lamina.digest import Digest  # noqa: E402
from lamina.image import mediatypes as mt  # noqa: E402
from lamina.image.config import History, build_config  # noqa: E402
from lamina.image.manifest import Descriptor, current_platform  # noqa: E402
from lamina.image.reference import Reference  # noqa: E402
from lamina.store.store import Store  # noqa: E402
from lamina.transport.local import StoreTransport, record_image  # noqa: E402
from lamina.transport.resolve import resolve_image  # noqa: E402


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def airgap(work: Path, runs: int, warm: float, lamina: str) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SystemExit("the air-gap part needs skopeo (apt-get install skopeo)")
    tree = CACHE / "tree"
    if not tree.is_dir():
        print(f"building the benchmark tree in {tree} ...", flush=True)
        build_tree(tree)
    a, b = store_env(work / "a"), store_env(work / "b")
    snaps = split_tree(tree, work / "snapshots", 4)
    release2 = work / "snapshots" / "L5"
    run(["cp", "-al", str(snaps[-1]), str(release2)])
    (release2 / "app.bin").write_bytes(os.urandom(5 << 20))
    run([lamina, "import", "app:1", *map(str, snaps)], env=a)
    run([lamina, "import", "app:2", *map(str, snaps), str(release2)], env=a)
    shutil.rmtree(work / "snapshots")
    run([lamina, "save", "app:1", "--format", "oci-archive", "-o", str(work / "r1.tar")], env=a)
    run([lamina, "load", str(work / "r1.tar")], env=b)
    run([lamina, "inventory", "-o", str(work / "inv.json")], env=b)
    # skopeo's side: A's release 2 and B's release 1 as OCI layouts
    run([lamina, "save", "app:2", "--format", "oci", "-o", str(work / "layout-a")], env=a)
    run([skopeo, "copy", "-q", f"oci-archive:{work / 'r1.tar'}", f"oci:{work / 'b-r1'}:1"])

    def lamina_incremental() -> None:
        run([lamina, "save", "app:2", "--exclude", str(work / "inv.json"),
             "-o", str(work / "x.tar")], env=a)
        run([lamina, "load", str(work / "x.tar")], env=b)

    def lamina_full() -> None:
        run([lamina, "save", "app:2", "--format", "oci-archive", "-o",
             str(work / "lfull.tar")], env=a)
        run([lamina, "load", str(work / "lfull.tar")], env=b)

    def skopeo_full() -> None:
        run([skopeo, "copy", "-q", f"oci:{work / 'layout-a'}:2",
             f"oci-archive:{work / 'sfull.tar'}"])
        run([skopeo, "copy", "-q", f"oci-archive:{work / 'sfull.tar'}",
             f"oci:{work / 'b-layout'}:2"])

    def reset(name: str) -> None:
        """B back to release 1 only."""
        for f in ("x.tar", "lfull.tar", "sfull.tar"):
            (work / f).unlink(missing_ok=True)
        if name == "skopeo":
            shutil.rmtree(work / "b-layout", ignore_errors=True)
            run(["cp", "-a", str(work / "b-r1"), str(work / "b-layout")])
        else:
            run([lamina, "rmi", "app:2"], env=b)
            run([lamina, "gc"], env=b)

    times: dict[str, list[float]] = {"incremental": [], "full": [], "skopeo": []}
    sizes: dict[str, int] = {}
    run(["cp", "-a", str(work / "b-r1"), str(work / "b-layout")])
    for _ in range(runs):
        for name, fn, out in (("incremental", lamina_incremental, "x.tar"),
                              ("skopeo", skopeo_full, "sfull.tar"),
                              ("full", lamina_full, "lfull.tar")):
            warm_memory(warm)
            times[name].append(timed(fn))
            sizes[name] = (work / out).stat().st_size
            reset(name)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"archive of release 2: lamina incremental {mb(sizes['incremental'])}, lamina "
          f"full {mb(sizes['full'])}, skopeo full {mb(sizes['skopeo'])}: "
          f"{sizes['skopeo'] / sizes['incremental']:.0f}\u00d7 fewer bytes across the gap")
    print(f"save + load: lamina incremental {med['incremental']:.2f} s, lamina full "
          f"{med['full']:.2f} s, skopeo full {med['skopeo']:.2f} s: incremental "
          f"{med['skopeo'] / med['incremental']:.2f}\u00d7 faster than skopeo "
          f"({med['full'] / med['incremental']:.2f}\u00d7 than lamina full)")
    print("  runs (incr/full/skopeo): " + ", ".join(
        f"{x:.2f}/{y:.2f}/{z:.2f}" for x, y, z in
        zip(times["incremental"], times["full"], times["skopeo"], strict=True)))


def _tar(name: str, data: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def deep_image(store: Store, base: str, tag: str, layers_total: int) -> None:
    """Record ``tag``: ``base``'s one layer, then small layers up to ``layers_total``."""
    source = StoreTransport(store)
    image = resolve_image(source, source.resolve(base))
    layers, diff_ids = list(image.manifest.layers), list(image.config.diff_ids)
    for n in range(len(layers) + 1, layers_total + 1):
        raw = _tar(f"{tag.replace(':', '-')}-{n}", f"{n}\n".encode())
        blob = gzip.compress(raw, compresslevel=1, mtime=0)
        digest = store.blobs.put_bytes(blob)
        store.meta.add_layer(str(digest), str(Digest.from_bytes(raw)), mt.OCI_LAYER_GZIP,
                             len(blob))
        layers.append(Descriptor(mt.OCI_LAYER_GZIP, digest, len(blob)))
        diff_ids.append(Digest.from_bytes(raw))
    config = build_config(diff_ids, [History(created_by=f"layer {i}")
                                     for i in range(len(diff_ids))],
                          current_platform(), created="2024-01-01T00:00:00Z")
    lease = store.open_lease()
    try:
        record_image(store, lease, config.raw, mt.OCI_CONFIG, layers,
                     [str(Reference.parse(tag))])
    finally:
        lease.close()


def deep(work: Path, runs: int, lamina: str) -> None:
    busybox = shutil.which("busybox")
    if busybox is None or os.geteuid() != 0 or shutil.which("bwrap") is None:
        raise SystemExit("the deep-stack part needs root, busybox and bwrap")
    rootdir = work / "busybox-root"
    (rootdir / "bin").mkdir(parents=True)
    shutil.copy2(busybox, rootdir / "bin" / "busybox")
    for applet in ("sh", "true"):
        (rootdir / "bin" / applet).symlink_to("busybox")
    times: dict[str, list[float]] = {"500 first": [], "500 again": [], "50 first": [],
                                     "50 again": []}
    for i in range(runs):
        root = work / f"deep-{i}"
        env = store_env(root)
        run([lamina, "import", "base", str(rootdir)], env=env)
        with Store(root) as store:
            deep_image(store, "base", "deep:500", 500)
            deep_image(store, "base", "deep:50", 50)
        order = ("500", "50") if i % 2 == 0 else ("50", "500")
        for n in order:
            for when in ("first", "again"):
                cmd = [lamina, "run", "--snapshotter", "overlay", f"deep:{n}", "true"]
                times[f"{n} {when}"].append(timed(lambda c=cmd, e=env: run(c, env=e)))
        shutil.rmtree(root)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"run start-up, 500 layers: first {med['500 first']:.2f} s (extract 100, merge "
          f"400), again {med['500 again']:.2f} s; 50 layers: first {med['50 first']:.2f} s, "
          f"again {med['50 again']:.2f} s")
    print(f"  500 / 50 layers: first {med['500 first'] / med['50 first']:.2f}\u00d7, again "
          f"{med['500 again'] / med['50 again']:.2f}\u00d7; 500 layers first / again "
          f"{med['500 first'] / med['500 again']:.1f}\u00d7")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    ap.add_argument("--warm", type=float, default=0.5,
                    help="GiB touched and freed before each timed air-gap run (default 0.5)")
    args = ap.parse_args()
    runs, lamina = 1 if args.quick else args.runs, lamina_cli()
    work = Path(tempfile.mkdtemp(prefix="bench-airgap-", dir="/var/tmp"))
    try:
        airgap(work, runs, args.warm, lamina)
        deep(work, runs, lamina)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
