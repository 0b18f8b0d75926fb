"""Operations on the stack: ``lamina rebase`` against a rebuild, ``lamina squash`` against
a flatten by umoci; same run, alternating.

    .venv/bin/python bench/bench_stackops.py [--runs N | --quick]

Rebase.  A realistic app (a RUN that writes 1,500 small files, a COPY of bench_build's
generated context: 1,500 files, 4.4 MB, then ENV and CMD) is built on base v1 (the
busybox base of examples/demo.sh); base v2 is the same with /etc/os-release patched and
one file added.  Timed, each run in fresh stores/roots that hold both bases and the app
built on v1 (untimed):

* ``lamina rebase app:v1 --old-base base:v1 --new-base base:v2``;
* ``lamina build`` of the app on v2 (the rebuild a base update costs without rebase: every
  step misses the cache);
* ``buildah bud --layers --isolation chroot --storage-driver vfs`` of the app on v2, in a
  root that built it on v1 (crane rebase works on registries only, and Debian has no
  crane: buildah's rebuild is the peer).

The rebased image is checked to unpack to the same tree as lamina's rebuild (file types,
modes, owners, sizes, contents), and its upper layers to be the app's own blobs.

Squash.  A 50-layer image of 200 MB (each layer 4 MB of hex text in 40 files, and each
overwriting 4 files and deleting 2 of the layer below), written once as an OCI layout by
Python's tarfile (cached under /var/tmp/lamina-bench/stackops).  Timed:

* ``lamina squash --all`` (flatten; the image loaded into a fresh store, untimed) and
  ``lamina squash --from 26`` (the top half);
* ``lamina squash oci:LAYOUT --all -t oci:OUT`` (layout to layout, as umoci works; an
  empty store runs it), whose layer must be the store flatten's, byte for byte;
* umoci's flatten: ``umoci unpack`` of the image, then ``umoci new`` + ``umoci insert``
  of the unpacked root as the one layer of a new image (umoci has no squash; this is the
  flatten its commands make).

The flattened images are checked to unpack to the same tree.  ``--quick``: one run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import build_context, run, start, walk  # noqa: E402
from bench_layer import lamina_cli, ratio_text, timed  # noqa: E402

CACHE = Path("/var/tmp/lamina-bench")
WORK = CACHE / "stackops"
EPOCH = "1700000000"
REPO = Path(__file__).resolve().parent.parent
FIFTY_VERSION = "1"

APP = """\
FROM {base}
RUN mkdir -p /data && cd /data && i=0; while [ $i -lt 1500 ]; do d=d$((i % 20)); \\
    mkdir -p $d; echo "file $i of the app" > $d/f$i; i=$((i + 1)); done
COPY app /app
ENV APP_HOME=/app
CMD ["/bin/sh", "-c", "ls /app"]
"""


def median_line(name: str, times: list[float], peers: dict[str, list[float]]) -> str:
    med = statistics.median(times)
    extra = "; ".join(ratio_text(statistics.median(t), med, p) for p, t in peers.items())
    runs = " ".join(f"{t:.2f}" for t in times)
    return f"  {name:34s} {med:7.2f} s   [{runs}]" + (f"   {extra}" if extra else "")


# -- the 50-layer image ------------------------------------------------------------------
def make_fifty(dest: Path) -> None:
    """An OCI layout ``dest`` holding ``bench/fifty:latest``: 50 gzip layers."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    rnd = random.Random(20261202)

    def put(data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return digest, len(data)

    layers, diff_ids = [], []
    for n in range(50):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            def add(name: str, data: bytes | None) -> None:
                info = tarfile.TarInfo(name)
                info.mtime = int(EPOCH)
                if data is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))

            add(f"l{n:02d}", None)
            if n:
                for f in range(2):                  # deleted from the layer below
                    add(f"l{n - 1:02d}/.wh.f{f:02d}", b"")
                for f in range(2, 6):               # overwritten
                    add(f"l{n - 1:02d}/f{f:02d}", rnd.randbytes(2000).hex().encode())
            for f in range(40):
                add(f"l{n:02d}/f{f:02d}", rnd.randbytes(50_000).hex().encode())
        tar_bytes = raw.getvalue()
        digest, size = put(gzip.compress(tar_bytes, compresslevel=1, mtime=0))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": digest, "size": size})
        diff_ids.append("sha256:" + hashlib.sha256(tar_bytes).hexdigest())
    config = {"created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
              "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"layer {i + 1}"}
                          for i in range(50)]}
    cdigest, csize = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cdigest, "size": csize}, "layers": layers}
    mdigest, msize = put(json.dumps(manifest).encode())
    (tmp / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest,
        "size": msize, "annotations": {"io.containerd.image.name": "bench/fifty:latest",
                                       "org.opencontainers.image.ref.name": "latest"}}]}))
    (tmp / "VERSION").write_text(FIFTY_VERSION)
    tmp.rename(dest)


def contents(root: Path) -> dict[str, object]:
    """walk() without mtimes and directory modes: what a flatten must keep."""
    out: dict[str, object] = {}
    for k, v in walk(root).items():
        out[k] = v[:6] if v[0] == "file" else v[0]
    return out


# -- main --------------------------------------------------------------------------------
def main() -> int:
    args = start(__doc__, "umoci")
    if args is None:
        return 1
    lamina = lamina_cli()
    context = build_context()
    fifty = CACHE / "stackops-fifty"
    if not (fifty / "VERSION").is_file() or (fifty / "VERSION").read_text() != FIFTY_VERSION:
        shutil.rmtree(fifty, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        make_fifty(fifty)
    size = sum(p.stat().st_size for p in (fifty / "blobs").rglob("*") if p.is_file())
    print(f"50-layer image: {fifty} ({size / 1e6:.1f} MB of blobs)")

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    shm = Path(tempfile.mkdtemp(prefix="bench-stackops-", dir="/dev/shm"))
    try:
        ok = rebase_bench(lamina, env, context, args.runs, shm)
        ok = squash_bench(lamina, env, fifty, args.runs, shm) and ok
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(WORK, ignore_errors=True)
    return 0 if ok else 1


def rebase_bench(lamina: str, env: dict[str, str], context: Path, runs: int,
                 shm: Path) -> bool:
    snapshots = WORK / "snapshots"
    run([str(REPO / "examples/seed/make-snapshots.sh"), str(snapshots)])
    v2 = WORK / "os-v2"
    shutil.copytree(snapshots / "os", v2, symlinks=True)
    (v2 / "etc").mkdir(exist_ok=True)
    (v2 / "etc" / "os-release").write_text("NAME=busybox\nVERSION=2 (patched)\n")
    (v2 / "etc" / "patched").write_text("security fix\n")
    for tag in ("v1", "v2"):
        (WORK / f"Containerfile.{tag}").write_text(APP.format(base=f"base:{tag}"))

    def lenv(store: Path) -> dict[str, str]:
        return {**env, "LAMINA_ROOT": str(store)}

    def lamina_store(name: str) -> Path:
        store = WORK / name
        run([lamina, "import", "base:v1", str(snapshots / "os")], env=lenv(store))
        run([lamina, "import", "base:v2", str(v2)], env=lenv(store))
        build(store, "v1")
        return store

    def build(store: Path, tag: str) -> None:
        run([lamina, "build", "-q", "-f", str(WORK / f"Containerfile.{tag}"), "-t",
             f"app:{tag}", str(context)], env=lenv(store))

    layouts = {}
    seed_store = lamina_store("lamina-seed")
    for tag in ("v1", "v2"):
        layouts[tag] = WORK / f"base-{tag}-oci"
        run([lamina, "save", f"base:{tag}", "-o", str(layouts[tag]), "--format", "oci"],
            env=lenv(seed_store))

    def buildah(root: Path) -> list[str]:
        return ["buildah", "--root", str(root), "--runroot", f"{root}-run",
                "--storage-driver", "vfs"]

    def bud(root: Path, tag: str) -> None:
        run(buildah(root) + ["bud", "--isolation", "chroot", "--pull=never", "--layers",
                             "--timestamp", EPOCH, "-f", str(WORK / f"Containerfile.{tag}"),
                             "-t", f"app:{tag}", str(context)], env=env, merge=True)

    def buildah_root(name: str) -> Path:
        root = WORK / name
        for tag in ("v1", "v2"):
            image_id = run(buildah(root) + ["pull", "-q", f"oci:{layouts[tag]}:{tag}"]
                           ).split()[-1]
            run(buildah(root) + ["tag", image_id, f"base:{tag}"])
        bud(root, "v1")
        return root

    times: dict[str, list[float]] = {"lamina rebase": [], "lamina build (rebuild on v2)": [],
                                     "buildah bud --layers (rebuild)": []}
    store = seed_store
    for i in range(runs):
        store = lamina_store(f"lamina-{i}")
        root = buildah_root(f"buildah-{i}")
        times["lamina rebase"].append(timed(lambda s=store: run(  # type: ignore[misc]
            [lamina, "rebase", "app:v1", "--old-base", "base:v1", "--new-base", "base:v2",
             "-t", "app:rebased", "-q"], env=lenv(s))))
        times["lamina build (rebuild on v2)"].append(timed(lambda s=store: build(s, "v2")))
        times["buildah bud --layers (rebuild)"].append(timed(lambda r=root: bud(r, "v2")))
    print(f"\nrebase an app onto a patched base vs rebuilding it (median of {runs}; "
          "runs alternate)")
    peers = {k: v for k, v in times.items() if k != "lamina rebase"}
    print(median_line("lamina rebase", times["lamina rebase"], peers))
    for name, t in peers.items():
        print(median_line(name, t, {}))
    # The rebased image is the rebuild's tree, on the app's own blobs.
    docs = json.loads(run([lamina, "inspect", "app:v1", "app:rebased", "app:v2"],
                          env=lenv(store)))
    own = [d["digest"] for d in docs[0]["Manifest"]["layers"][1:]]
    kept = [d["digest"] for d in docs[1]["Manifest"]["layers"][1:]] == own
    run([lamina, "unpack", "app:rebased", str(shm / "rebased")], env=lenv(store))
    run([lamina, "unpack", "app:v2", str(shm / "rebuilt")], env=lenv(store))
    same = contents(shm / "rebased") == contents(shm / "rebuilt")
    print(f"  rebased image: the app's {len(own)} layers kept as they were: {kept}; "
          f"same tree as the rebuild: {same}")
    return kept and same


def squash_bench(lamina: str, env: dict[str, str], fifty: Path, runs: int,
                 shm: Path) -> bool:
    def lenv(store: Path) -> dict[str, str]:
        return {**env, "LAMINA_ROOT": str(store)}

    between = "lamina squash oci: --all -t oci:"
    times: dict[str, list[float]] = {"lamina squash --all": [], "lamina squash --from 26": [],
                                     between: [], "umoci unpack + new + insert": []}
    store = WORK / "squash-0"
    for i in range(runs):
        store = WORK / f"squash-{i}"
        run([lamina, "load", str(fifty)], env=lenv(store))
        times["lamina squash --all"].append(timed(lambda s=store: run(  # type: ignore[misc]
            [lamina, "squash", "bench/fifty", "--all", "-t", "bench/flat"], env=lenv(s))))
        times["lamina squash --from 26"].append(timed(lambda s=store: run(  # type: ignore[misc]
            [lamina, "squash", "bench/fifty", "--from", "26", "-t", "bench/half"],
            env=lenv(s))))
        out = WORK / f"flat-oci-{i}"
        times[between].append(timed(lambda o=out, i=i: run(  # type: ignore[misc]
            [lamina, "squash", f"oci:{fifty}", "--all", "-t", f"oci:{o}:flat"],
            env=lenv(WORK / f"runner-{i}"))))
        layout = WORK / f"umoci-{i}"
        shutil.copytree(fifty, layout)
        bundle = WORK / f"bundle-{i}"

        def umoci_flatten(layout: Path = layout, bundle: Path = bundle) -> None:
            run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)])
            run(["umoci", "new", "--image", f"{layout}:flat"])
            run(["umoci", "insert", "--image", f"{layout}:flat", str(bundle / "rootfs"), "/"])

        times["umoci unpack + new + insert"].append(timed(umoci_flatten))
    print(f"\nsquash a 50-layer, 200 MB image (median of {runs}; runs alternate)")
    peer = {"umoci flatten": times["umoci unpack + new + insert"]}
    print(median_line("lamina squash --all", times["lamina squash --all"], peer))
    print(median_line("lamina squash --from 26", times["lamina squash --from 26"], {}))
    print(median_line(between, times[between], peer))
    print(median_line("umoci unpack + new + insert", times["umoci unpack + new + insert"], {}))
    flat = json.loads(run([lamina, "inspect", "bench/flat"], env=lenv(store)))
    out = WORK / f"flat-oci-{runs - 1}"
    top = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((out / "blobs" / "sha256" / top.split(":")[1]).read_text())
    same_layer = manifest["layers"] == flat[0]["Manifest"]["layers"]
    print(f"  layout-to-layout flatten wrote the store flatten's layer: {same_layer}")
    run([lamina, "unpack", "bench/flat", str(shm / "flat")], env=lenv(store))
    run([lamina, "unpack", "bench/half", str(shm / "half")], env=lenv(store))
    mine, half = contents(shm / "flat"), contents(shm / "half")
    shutil.rmtree(shm / "flat")
    shutil.rmtree(shm / "half")
    run([lamina, "unpack", "bench/fifty", str(shm / "orig")], env=lenv(store))
    orig = contents(shm / "orig")
    theirs = contents(WORK / f"bundle-{runs - 1}" / "rootfs")
    ok = mine == orig == half == theirs and same_layer
    print(f"  flattened and half-squashed trees equal the original's and umoci's: {ok} "
          f"({len(orig)} entries)")
    return ok


if __name__ == "__main__":
    sys.exit(main())
