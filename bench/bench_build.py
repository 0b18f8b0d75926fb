"""Building a multi-step Containerfile: ``lamina build`` against ``buildah bud``, same run.

    .venv/bin/python bench/bench_build.py [--runs N | --quick]

The Containerfile (written by this script) starts from the busybox base of
examples/demo.sh (``examples/seed/make-snapshots.sh`` then ``lamina import busybox
DIR/os``) and has six steps: a RUN that creates 3,000 small files with a busybox shell
loop, a COPY of a generated context directory (1,500 files, 4.4 MB of hex text), a RUN
that deletes, appends to, chmods and links some of them, then ENV, WORKDIR and CMD.

Each run, alternating (A B A B ...):

* cold: ``lamina build`` into a fresh store (``LAMINA_ROOT=/var/tmp/lamina-bench/build/
  lamina-<n>``, busybox imported untimed), and ``buildah bud --isolation chroot
  --storage-driver vfs --layers`` with a fresh ``--root``/``--runroot`` under the same
  directory (the busybox base pulled untimed from an OCI layout ``lamina save --format
  oci`` wrote, and tagged ``busybox``).  For reference, buildah's default mode too
  (no ``--layers``: one layer committed at the end, no cache), in a root of its own.
* cached: the same build again in the same store / root (every step a cache hit; checked).

``SOURCE_DATE_EPOCH`` is set for both; buildah 1.28 does not read it, so it is also
given ``--timestamp`` with the same value.  Afterwards the final images' file trees are
compared entry by entry (type, mode, owner, size, content hash, link target, mtime of
files), from ``lamina unpack`` on a tmpfs and ``buildah mount``, and their Env, WorkingDir
and Cmd.  The empty /etc/hosts, /etc/resolv.conf and /run that buildah's RUN steps leave
behind as mount points are reported, not counted as differences; any other difference
is printed and the exit status is 1.

Stores and roots are kept until the end (deleting big trees on this ext4 slows file
creation for minutes) and removed then.  ``--quick`` is one run, for smoke testing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import lamina_cli, ratio_text, timed  # noqa: E402 - the sibling's helpers

CACHE = Path("/var/tmp/lamina-bench")
WORK = CACHE / "build"
CONTEXT_VERSION = "1"
EPOCH = "1700000000"
REPO = Path(__file__).resolve().parent.parent

CONTAINERFILE = """\
FROM busybox
RUN mkdir -p /data && cd /data && i=0; while [ $i -lt 3000 ]; do d=d$((i % 30)); \\
    mkdir -p $d; echo "file $i of the build benchmark" > $d/f$i; i=$((i + 1)); done
COPY app /app
RUN rm -rf /app/pkg00 /data/d0 && for f in /app/pkg01/*.txt; do echo changed >> "$f"; done \\
    && chmod 600 /app/pkg02/mod000.txt && ln -s /app/pkg03 /data/pkg03 \\
    && rm /data/d1/f1 && echo built > /etc/built
ENV APP_HOME=/app PATH=/app/bin:/bin:/usr/bin
WORKDIR /app
CMD ["/bin/sh", "-c", "ls /app"]
"""
# Files buildah's RUN leaves in the image as mount points (empty /etc/hosts, /etc/resolv.conf
# and a /run directory); not differences in what the Containerfile asks for.
BUILDAH_MOUNT_POINTS = {"etc/hosts", "etc/resolv.conf", "run"}


def make_context(dest: Path) -> None:
    """20 directories of 75 files each, 200 B to 8 kB of hex text (not trivially compressible)."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rnd = random.Random(20261127)
    for d in range(20):
        pkg = tmp / "app" / f"pkg{d:02d}"
        pkg.mkdir(parents=True)
        for f in range(75):
            size = rnd.choice([200, 1000, 2000, 4000, 8000])
            (pkg / f"mod{f:03d}.txt").write_bytes(rnd.randbytes(size // 2).hex().encode())
    (tmp / "VERSION").write_text(CONTEXT_VERSION)
    tmp.rename(dest)


def run(
    cmd: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    merge: bool = False,
) -> str:
    """stdout (with stderr merged into it if ``merge``); exit with the output on failure."""
    try:
        proc = subprocess.run(
            cmd,
            check=True,
            text=True,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        )
    except subprocess.CalledProcessError as e:
        out = e.stdout[-2000:] + (e.stderr or "")[-2000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({e.returncode}):\n{out}") from None
    return proc.stdout


def walk(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under root: type, mode, owner, and size, sha256 and mtime of files."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            mode = oct(stat.S_IMODE(st.st_mode))
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()[:16]
                out[rel] = ("file", mode, st.st_uid, st.st_gid, st.st_size, h, int(st.st_mtime))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_uid, st.st_gid)
            else:
                out[rel] = ("other", oct(st.st_mode), st.st_uid, st.st_gid, st.st_rdev)
    return out


def compare_trees(ours: Path, theirs: Path, label: str) -> bool:
    """Print how two trees differ; True when only buildah's mount points do."""
    a, b = walk(ours), walk(theirs)
    extra = sorted(k for k in set(b) - set(a) if k in BUILDAH_MOUNT_POINTS)
    diffs = [
        (k, a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k not in extra
    ]
    files = sum(1 for v in a.values() if v[0] == "file")
    if not diffs:
        print(
            f"  lamina vs {label}: same tree, {len(a)} entries ({files} files: content, mode,"
            f" owner, mtime; links; directories); buildah also has {', '.join(extra) or '-'}"
            " (mount points its RUN leaves)"
        )
        return True
    print(f"  lamina vs {label}: {len(diffs)} DIFFERENCES ({len(a)} vs {len(b)} entries):")
    for k, x, y in diffs[:40]:
        print(f"    {k}: lamina {x}  buildah {y}")
    return False


def runs_args(doc: str | None) -> argparse.Namespace:
    """``--runs N`` / ``--quick`` (one run), as every build benchmark takes them."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    return args


def have_peers(*tools: str) -> bool:
    """Whether the peers are installed (else one line saying which to install)."""
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return False
    return True


def start(doc: str | None, *peers: str) -> argparse.Namespace | None:
    """The arguments (``runs_args``), once the peers (buildah first) are found and their
    versions printed; None (after one line saying which to install) if one is missing."""
    args = runs_args(doc)
    if not have_peers("buildah", *peers):
        return None
    print(" / ".join(run([tool, "--version"]).strip() for tool in ("buildah", *peers)))
    return args


def build_context() -> Path:
    """The cached build context (made once per ``CONTEXT_VERSION``)."""
    context = CACHE / "build-context"
    if not (context / "VERSION").is_file() or (context / "VERSION").read_text() != CONTEXT_VERSION:
        shutil.rmtree(context, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        make_context(context)
    return context


def main() -> int:
    args = start(__doc__)
    if args is None:
        return 1
    lamina = lamina_cli()
    context = build_context()
    n_files = sum(len(f) for _, _, f in os.walk(context / "app"))
    n_bytes = sum(p.stat().st_size for p in (context / "app").rglob("*") if p.is_file())
    print(f"context: {context}  {n_files} files, {n_bytes / 1e6:.1f} MB")

    shutil.rmtree(WORK, ignore_errors=True)  # left by an interrupted run
    WORK.mkdir(parents=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    containerfile = WORK / "Containerfile"
    containerfile.write_text(CONTAINERFILE)
    unpack_root = Path(tempfile.mkdtemp(prefix="bench-build-", dir="/dev/shm"))
    mounted: list[tuple[list[str], str]] = []
    ok = True
    try:
        # The busybox base, as examples/demo.sh makes it; and an OCI layout of it for buildah.
        snapshots = WORK / "snapshots"
        run([str(REPO / "examples/seed/make-snapshots.sh"), str(snapshots)])

        def lamina_env(store: Path) -> dict[str, str]:
            return {**env, "LAMINA_ROOT": str(store)}

        def new_lamina_store(name: str) -> Path:
            store = WORK / name
            run([lamina, "import", "busybox", "os"], env=lamina_env(store), cwd=snapshots)
            return store

        base_layout = WORK / "busybox-oci"
        run(
            [lamina, "save", "busybox", "-o", str(base_layout), "--format", "oci"],
            env=lamina_env(new_lamina_store("lamina-base")),
        )

        def buildah(root: Path) -> list[str]:
            return [
                "buildah",
                "--root",
                str(root),
                "--runroot",
                f"{root}-run",
                "--storage-driver",
                "vfs",
            ]

        def new_buildah_root(name: str) -> Path:
            root = WORK / name
            image_id = run(buildah(root) + ["pull", "-q", f"oci:{base_layout}:latest"]).split()[-1]
            run(buildah(root) + ["tag", image_id, "busybox"])
            return root

        def lamina_build(store: Path, expect_new: int, ids: list[str]) -> Callable[[], None]:
            def go() -> None:
                out = run(
                    [
                        lamina,
                        "build",
                        "--json",
                        "-f",
                        str(containerfile),
                        "-t",
                        "bench/build",
                        str(context),
                    ],
                    env=lamina_env(store),
                )
                result = json.loads(out)
                if result["new_layers"] != expect_new:
                    raise SystemExit(
                        f"lamina build: {result['new_layers']} new layers, expected {expect_new}"
                    )
                ids.append(result["id"])

            return go

        def buildah_bud(
            root: Path, layers: bool, cached: bool, ids: list[str]
        ) -> Callable[[], None]:
            def go() -> None:
                out = run(
                    buildah(root)
                    + ["bud", "--isolation", "chroot", "--pull=never", "--timestamp", EPOCH]
                    + (["--layers"] if layers else [])
                    + ["-f", str(containerfile), "-t", "bench/build", str(context)],
                    env=env,
                    merge=True,
                )
                hits = out.count("--> Using cache")
                if hits != (6 if cached else 0):
                    raise SystemExit(f"buildah bud: {hits} cache hits, cached={cached}")
                ids.append(out.split()[-1])

            return go

        cold: dict[str, list[float]] = {
            "lamina build": [],
            "buildah bud --layers": [],
            "buildah bud (no --layers)": [],
        }
        cached: dict[str, list[float]] = {"lamina build": [], "buildah bud --layers": []}
        lamina_ids: list[str] = []
        buildah_ids: list[str] = []
        plain_ids: list[str] = []
        load = [os.getloadavg()[0]]
        for i in range(args.runs):
            # Untimed: a fresh store and fresh roots, each holding the busybox base only.
            store = new_lamina_store(f"lamina-{i}")
            root = new_buildah_root(f"buildah-{i}")
            plain_root = new_buildah_root(f"buildah-plain-{i}")
            cold["lamina build"].append(timed(lamina_build(store, 3, lamina_ids)))
            cold["buildah bud --layers"].append(timed(buildah_bud(root, True, False, buildah_ids)))
            cold["buildah bud (no --layers)"].append(
                timed(buildah_bud(plain_root, False, False, plain_ids))
            )
            cached["lamina build"].append(timed(lamina_build(store, 0, lamina_ids)))
            cached["buildah bud --layers"].append(timed(buildah_bud(root, True, True, buildah_ids)))
            load.append(os.getloadavg()[0])

        def report(title: str, results: dict[str, list[float]]) -> None:
            print(f"\n{title} (median of {args.runs}; runs alternate)")
            for name, times in results.items():
                med = statistics.median(times)
                runs = " ".join(f"{t:.2f}" for t in times)
                extra = ""
                if name.startswith("lamina"):
                    extra = "   " + "; ".join(
                        ratio_text(statistics.median(results[p]), med, p)
                        for p in results
                        if not p.startswith("lamina")
                    )
                print(f"  {name:28s} {med:6.2f} s   [{runs}]{extra}")

        report("cold build (fresh store / root, only the base in it)", cold)
        report("cached build (second build, same store / root: every step a cache hit)", cached)
        print(f"\nload average (1 min) before/after each run: {' '.join(f'{x:.2f}' for x in load)}")
        for what, ids in (
            ("lamina", lamina_ids),
            ("buildah --layers", buildah_ids),
            ("buildah (no --layers)", plain_ids),
        ):
            distinct = sorted(set(ids))
            print(
                f"{what} image ids: {len(distinct)} distinct over {len(ids)} builds"
                f" ({', '.join(x.removeprefix('sha256:')[:12] for x in distinct)})"
            )

        # Same tree?  The last run's images, lamina's unpacked on a tmpfs.
        print("\nfinal image, lamina against buildah:")
        ours = unpack_root / "lamina"
        run([lamina, "unpack", "bench/build", str(ours)], env=lamina_env(store))
        lamina_cfg = json.loads(run([lamina, "inspect", "bench/build"], env=lamina_env(store)))
        keys = ("Env", "WorkingDir", "Cmd")
        want = {k: lamina_cfg[0]["Config"].get(k) for k in keys}
        for label, r in (("buildah --layers", root), ("buildah (no --layers)", plain_root)):
            ctr = run(buildah(r) + ["from", "--pull=never", "bench/build"]).split()[-1]
            mounted.append((buildah(r), ctr))
            theirs = Path(run(buildah(r) + ["mount", ctr]).strip())
            ok = compare_trees(ours, theirs, label) and ok
            info = json.loads(run(buildah(r) + ["inspect", "--type", "image", "bench/build"]))
            got = {k: info["OCIv1"]["config"].get(k) for k in keys}
            if got == want:
                print(f"  lamina vs {label}: same Env, WorkingDir, Cmd")
            else:
                ok = False
                print(f"  lamina vs {label}: config DIFFERS: lamina {want}, buildah {got}")
    finally:
        for cmd, ctr in mounted:
            subprocess.run(cmd + ["umount", ctr], capture_output=True)
            subprocess.run(cmd + ["rm", ctr], capture_output=True)
        shutil.rmtree(unpack_root, ignore_errors=True)
        shutil.rmtree(WORK, ignore_errors=True)
    if not ok:
        print("\nthe images differ (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
