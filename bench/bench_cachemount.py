"""A pip/npm-style rebuild after a source change, with and without ``RUN --mount=type=cache``:
``lamina build`` against ``buildah bud``, same run.

    .venv/bin/python bench/bench_cachemount.py [--runs N | --quick]

The context (written by this script) holds ``requirements.txt`` (12 "packages"), a
``fetch.sh`` standing in for the package manager, and ``src/``.  The Containerfile copies
the whole context, then runs ``fetch.sh`` — so any source change re-runs the install
step, as ``COPY . /app`` + ``RUN pip install /app`` does.  ``fetch.sh`` "downloads"
each package into a download directory only when it is not there yet (a 0.25 s pause
for the network, then 1 MiB of random bytes through ``gzip -9``), then "installs" every
package into ``/opt/pkgs`` (gunzip).  Two Containerfiles:

* with a cache mount: ``RUN --mount=type=cache,id=<run id>,target=/cache sh fetch.sh
  /cache``: the downloads stay in the cache mount between builds;
* without: ``RUN sh fetch.sh /tmp/dl && rm -rf /tmp/dl`` (pip's ``--no-cache-dir``).

Each run, alternating lamina and buildah (A B A B ...), for each Containerfile: a fresh
store / root with the busybox base (untimed), a first build (untimed: fills the cache
mount), one source file changed, then the timed rebuild.  The rebuild re-runs the COPY
and the install step in all four cases; only with a cache mount are the downloads
skipped.  buildah runs as ``buildah bud --isolation chroot --storage-driver vfs
--layers`` (the mode with a layer cache, as lamina's).  Each rebuilt image's
/opt/pkgs is checked (12 packages of 1 MiB).

Prints medians and ratios: lamina vs buildah for each Containerfile, and what the cache
mount saves each tool.  ``--quick`` is one run, for smoke testing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import start  # noqa: E402 - the siblings' helpers
from bench_layer import lamina_cli, ratio_text, timed  # noqa: E402

WORK = Path("/var/tmp/lamina-bench/cachemount")
REPO = Path(__file__).resolve().parent.parent
EPOCH = "1700000000"
PACKAGES = 12

FETCH = """\
#!/bin/sh
# fetch.sh DOWNLOADS: "download" what requirements.txt lists (only what DOWNLOADS lacks),
# then "install" all of it into /opt/pkgs.
set -e
dl=$1
mkdir -p "$dl" /opt/pkgs
while read -r pkg; do
    [ -n "$pkg" ] || continue
    if [ ! -f "$dl/$pkg.gz" ]; then
        sleep 0.25
        busybox dd if=/dev/urandom bs=65536 count=16 2>/dev/null | busybox gzip -9 \\
            > "$dl/$pkg.gz.part"
        mv "$dl/$pkg.gz.part" "$dl/$pkg.gz"
        echo "downloaded $pkg"
    fi
    busybox gzip -dc "$dl/$pkg.gz" > "/opt/pkgs/$pkg"
done < /app/requirements.txt
echo "installed $(ls /opt/pkgs | busybox wc -l) packages"
"""

WITH_CACHE = """\
FROM busybox
COPY . /app
RUN --mount=type=cache,id={id},target=/cache sh /app/fetch.sh /cache
"""
WITHOUT_CACHE = """\
FROM busybox
COPY . /app
RUN sh /app/fetch.sh /tmp/dl && rm -rf /tmp/dl
"""


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """stdout and stderr together; exit with the output on failure."""
    proc = subprocess.run(cmd, text=True, env=env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return proc.stdout


def make_context(dest: Path, containerfile: str) -> None:
    (dest / "src").mkdir(parents=True)
    (dest / "requirements.txt").write_text("".join(f"pkg{i:02d}\n" for i in range(PACKAGES)))
    (dest / "fetch.sh").write_text(FETCH)
    (dest / "src" / "main.txt").write_text("version 1\n")
    (dest / "Containerfile").write_text(containerfile)


def change_source(ctx: Path, n: int) -> None:
    (ctx / "src" / "main.txt").write_text(f"version {n + 2}\n")


def main() -> int:
    args = start(__doc__)
    if args is None:
        return 1
    lamina = lamina_cli()
    shutil.rmtree(WORK, ignore_errors=True)   # left by an interrupted run
    WORK.mkdir(parents=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    # buildah keeps cache mounts in a directory of its own (/var/tmp/buildah-cache, not
    # under --root): ids unique to this run keep runs apart; removed at the end.
    run_id = uuid.uuid4().hex[:12]
    buildah_caches: list[str] = []
    try:
        snapshots = WORK / "snapshots"
        run([str(REPO / "examples/seed/make-snapshots.sh"), str(snapshots)])

        def lamina_env(store: Path) -> dict[str, str]:
            return {**env, "LAMINA_ROOT": str(store)}

        def new_lamina_store(name: str) -> Path:
            store = WORK / name
            run([lamina, "import", "busybox", "os"], env=lamina_env(store), cwd=snapshots)
            return store

        base_layout = WORK / "busybox-oci"
        run([lamina, "save", "busybox", "-o", str(base_layout), "--format", "oci"],
            env=lamina_env(new_lamina_store("lamina-base")))

        def buildah(root: Path) -> list[str]:
            return ["buildah", "--root", str(root), "--runroot", f"{root}-run",
                    "--storage-driver", "vfs"]

        def new_buildah_root(name: str) -> Path:
            root = WORK / name
            image = run(buildah(root) + ["pull", "-q", f"oci:{base_layout}:latest"]).split()[-1]
            run(buildah(root) + ["tag", image, "busybox"])
            return root

        def check(listing: str, what: str) -> None:
            names = [n for n in listing.split() if n.startswith("pkg")]
            if len(names) != PACKAGES:
                raise SystemExit(f"{what}: {len(names)} packages installed, expected {PACKAGES}")

        def lamina_build(store: Path, ctx: Path, downloads: int) -> Callable[[], None]:
            def go() -> None:
                out = run([lamina, "build", "-t", "bench/cm", str(ctx)], env=lamina_env(store))
                if out.count("downloaded pkg") != downloads:
                    raise SystemExit(f"lamina: {out.count('downloaded pkg')} downloads, "
                                     f"expected {downloads}:\n{out[-2000:]}")
            return go

        def buildah_bud(root: Path, ctx: Path, downloads: int) -> Callable[[], None]:
            def go() -> None:
                out = run(buildah(root) + ["bud", "--isolation", "chroot", "--pull=never",
                                           "--layers", "--timestamp", EPOCH, "-t", "bench/cm",
                                           str(ctx)], env=env)
                if out.count("downloaded pkg") != downloads:
                    raise SystemExit(f"buildah: {out.count('downloaded pkg')} downloads, "
                                     f"expected {downloads}:\n{out[-2000:]}")
            return go

        results: dict[str, dict[str, list[float]]] = {
            "with cache mount": {"lamina build": [], "buildah bud": []},
            "without": {"lamina build": [], "buildah bud": []},
        }
        for i in range(args.runs):
            for variant, template in (("with cache mount", WITH_CACHE),
                                      ("without", WITHOUT_CACHE)):
                cache_id = f"bench-{run_id}-{i}-{len(variant)}"
                buildah_caches.append(cache_id)
                warm = PACKAGES if variant == "without" else 0
                for tool in ("lamina build", "buildah bud"):
                    name = f"{tool.split()[0]}-{i}-{len(variant)}"
                    ctx = WORK / f"ctx-{name}"
                    make_context(ctx, template.format(id=cache_id + tool.split()[0]))
                    if tool == "lamina build":
                        store = new_lamina_store(name)
                        lamina_build(store, ctx, PACKAGES)()          # fills the cache
                        change_source(ctx, i)
                        results[variant][tool].append(timed(lamina_build(store, ctx, warm)))
                        unpacked = WORK / f"unpacked-{name}"
                        run([lamina, "unpack", "bench/cm", str(unpacked)],
                            env=lamina_env(store))
                        check(" ".join(os.listdir(unpacked / "opt/pkgs")), tool)
                        usage = json.loads(run([lamina, "df", "--json"],
                                               env=lamina_env(store)))
                        mounts = usage["cache_mounts"]
                        if (variant == "with cache mount") != bool(mounts):
                            raise SystemExit(f"lamina df: cache mounts {mounts}")
                    else:
                        root = new_buildah_root(name)
                        buildah_bud(root, ctx, PACKAGES)()
                        change_source(ctx, i)
                        results[variant][tool].append(timed(buildah_bud(root, ctx, warm)))
                        ctr = run(buildah(root) + ["from", "--pull=never", "bench/cm"]).split()[-1]
                        check(run(buildah(root) + ["run", "--isolation", "chroot", ctr, "ls",
                                                   "/opt/pkgs"]), tool)
                        run(buildah(root) + ["rm", ctr])

        print(f"\nrebuild after a source change, {PACKAGES} packages of 1 MiB "
              f"(median of {args.runs}; runs alternate)")
        med = {v: {t: statistics.median(x) for t, x in r.items()} for v, r in results.items()}
        for variant, per_tool in results.items():
            for tool, times in per_tool.items():
                extra = ""
                if tool == "lamina build":
                    extra = "   " + ratio_text(med[variant]["buildah bud"], med[variant][tool],
                                               "buildah bud")
                print(f"  {variant:17s} {tool:13s} {med[variant][tool]:6.2f} s   "
                      f"[{' '.join(f'{t:.2f}' for t in times)}]{extra}")
        for tool in ("lamina build", "buildah bud"):
            saved = med["without"][tool] / med["with cache mount"][tool]
            print(f"  the cache mount makes {tool}'s rebuild {saved:.2f}\u00d7 faster")
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
        # buildah 1.28: /var/tmp/buildah-cache[-<uid>]/<id>; only this run's ids go.
        for top in Path("/var/tmp").glob("buildah-cache*"):
            for cache_id in buildah_caches:
                for path in top.glob(f"{cache_id}*"):
                    shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                top.rmdir()   # if it is empty now (made by this run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
