"""Registry push and pull: lamina against skopeo, same run, docker-registry on loopback.

    .venv/bin/python bench/bench_registry.py [--tree DIR | --small] [--runs N | --quick]
                                              [--jobs N] [--warm GIB]

The image is "a few hundred MB", as issue #4 asks: a cached ~1 GB tree of this
machine's programs and libraries (/usr/lib/x86_64-linux-gnu, /usr/bin, python3.11,
/usr/share; files up to 64 MiB, like a real application image) split into five
successive snapshots, built once with ``lamina import`` into five gzip layers (~460 MB
compressed), and saved once with ``lamina save --format oci`` as the OCI layout skopeo
pushes from.  The snapshots hardlink the tree's files, so building them copies nothing.
``--small`` uses bench_layer.py's ~200 MB tree in four layers (~77 MB compressed)
instead: there the CLI's fixed start-up cost weighs more.

Memory: on these VMs a page the host has reclaimed costs ~3.5 s/GiB to touch again
(bench/README.md), and a pull writes ~460 MB of fresh page cache, so one run can take
twice as long as the next for no reason of its own.  Before every timed run, of either
tool, the harness touches and frees ``--warm`` GiB (default 1.5), so each starts
from the same warm free memory; the warming is outside the clock.

Debian's ``docker-registry`` serves on a free 127.0.0.1 port with a temporary storage
directory.  Runs alternate (A B A B ...), as bench/README.md asks;
medians and peer/lamina ratios are printed.

* push: ``lamina push --json NAME 127.0.0.1:PORT/lamina-push-N:v1`` (CLI subprocess,
  default ``--jobs 3``) from a fresh copy of the store made before the clock starts (the
  store remembers which repositories hold its blobs and would mount instead of upload
  on a second push), against ``skopeo copy --preserve-digests oci:LAYOUT:v1
  docker://127.0.0.1:PORT/skopeo-push-N:v1``.  Fresh repository names every run; every
  blob must come back ``pushed`` (lamina's JSON) / ``Copying blob ... done`` (skopeo),
  and the manifest skopeo pushed must be lamina's, byte for byte.
* pull: ``lamina pull --json`` into a fresh empty store against ``skopeo copy
  docker://... oci:FRESH_DIR:v1``, both on the filesystem of /var/tmp; both verify
  digests and write every blob to disk, each fsynced before its rename (lamina also
  fsyncs the directory after each rename and records leases and the image in SQLite).
* in-process rows: ``transfer()`` (what both commands call) in this process, already
  imported, for the same push and pull: the CLI rows minus process start and imports.
* the CLI's fixed cost: ``lamina push`` to a closed port (start, imports, argument
  parsing, store open), with bytecode cached and without.

lamina subprocesses get ``PYTHONPYCACHEPREFIX`` (and no PYTHONDONTWRITEBYTECODE), so
they run from cached bytecode, as an installed lamina does (see ``lamina_env``).

skopeo keeps a blob-info cache (for root /var/lib/containers/cache) that remembers which
repositories hold a blob and mounts from them: each skopeo run gets an empty one, in a
private mount namespace (``unshare -m`` and a bind mount, a few ms of the timed run).
``--quick`` is one run of each, for smoke testing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import (  # noqa: E402
    CACHE,
    build_tree,
    lamina_cli,
    ratio_text,
    run,
    store_env,
    timed,
)

from lamina.store.store import Store  # noqa: E402
from lamina.transport.places import Place  # noqa: E402
from lamina.transport.registry import RegistryOptions  # noqa: E402
from lamina.transport.transfer import (  # noqa: E402
    TransferOptions,
    pull_place,
    push_places,
    transfer,
)

LAYERS = 5
SMALL_LAYERS = 4
IMAGE = "bench/registry:v1"
BIG_TREE = CACHE / "registry-tree"
BIG_SOURCES = ["/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib/python3.11", "/usr/share"]
BIG_TARGET = 1000 * 1000 * 1000
BIG_MAX_FILE = 64 << 20
SKOPEO_CACHE = "/var/lib/containers/cache"   # containers/image's blob-info cache, for root
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def split_tree(tree: Path, dest: Path, parts: int) -> list[Path]:
    """Snapshots dest/L1..Ln of ``tree``: Li holds the first i of ``parts`` groups of its
    files (walk order, equal bytes), hardlinked; symlinks go with their neighbours."""
    entries: list[tuple[str, int, bool]] = []   # (relative path, size, is symlink)
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            link = os.path.islink(p)
            entries.append((os.path.relpath(p, tree), 0 if link else os.lstat(p).st_size, link))
    total = sum(size for _, size, _ in entries)
    snaps = [dest / f"L{i + 1}" for i in range(parts)]
    done = 0
    for rel, size, link in entries:
        group = min(parts - 1, done * parts // total)
        done += size
        src = tree / rel
        for snap in snaps[group:]:
            d = snap / rel
            d.parent.mkdir(parents=True, exist_ok=True)
            if link:
                os.symlink(os.readlink(src), d)
            else:
                os.link(src, d)
    return snaps


def warm_memory(gib: float) -> None:
    """Touch ``gib`` GiB and free it (in a child, so the memory really goes back): the
    next run's page cache and buffers come from pages the host has not reclaimed."""
    if gib > 0:
        subprocess.run([sys.executable, "-c",
                        f"x = b'\\1' * {int(gib * (1 << 30))}; del x"], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {work / 'registry-data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: info\n"
    )
    log = open(work / "registry.log", "wb")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"docker-registry did not start; see {work / 'registry.log'}")


def get_manifest(registry: str, repo: str, tag: str) -> bytes:
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


UPLOAD = re.compile(
    r'http\.request\.method=PUT .*http\.request\.uri="?/v2/(?P<repo>[^/ ]+)/blobs/uploads/'
    r'[^" ]*digest=sha256%3A(?P<hex>[0-9a-f]{64})"? .*http\.response\.status=201')
MOUNT = re.compile(r'http\.request\.uri="?/v2/(?P<repo>[^/ ]+)/blobs/uploads/[^" ]*mount=')


def lamina_env(root: Path, bytecode: bool = True) -> dict[str, str]:
    """``LAMINA_ROOT=root``; with ``bytecode``, compiled modules are cached (under
    CACHE/pycache), as for an installed lamina (pip compiles at install), even where
    PYTHONDONTWRITEBYTECODE is set, as on these machines: the editable install would
    otherwise compile lamina's ~50 modules from source in every run."""
    env = store_env(root)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def uploads_in_log(log: Path) -> tuple[dict[str, set[str]], set[str]]:
    """From docker-registry's access log: repository -> digests whose upload completed
    (the closing PUT ?digest= answered 201), and the repositories asked to mount."""
    done: dict[str, set[str]] = {}
    mounts: set[str] = set()
    for line in log.read_text(errors="replace").splitlines():
        if "response completed" not in line:
            continue
        m = UPLOAD.search(line)
        if m:
            done.setdefault(m["repo"], set()).add("sha256:" + m["hex"])
        m = MOUNT.search(line)
        if m:
            mounts.add(m["repo"])
    return done, mounts


def skopeo_cmd(empty_cache: Path, args: list[str]) -> list[str]:
    """skopeo in a private mount namespace whose blob-info cache is an empty directory."""
    script = 'mount --bind "$1" "$2" && shift 2 && exec skopeo "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
            str(empty_cache), SKOPEO_CACHE, *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, help="tree to split (default: the ~1 GB cached one)")
    ap.add_argument("--small", action="store_true",
                    help="bench_layer's ~200 MB tree in 4 layers (~77 MB compressed)")
    ap.add_argument("--warm", type=float, default=1.5,
                    help="GiB touched and freed before each timed run (default 1.5)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    ap.add_argument("--jobs", type=int, default=3, help="lamina --jobs (default 3)")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    lamina = lamina_cli()
    for tool in ("skopeo", "unshare", "/usr/bin/docker-registry"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 1
    os.makedirs(SKOPEO_CACHE, exist_ok=True)

    layers = SMALL_LAYERS if args.small else LAYERS
    tree: Path = args.tree or (CACHE / "tree" if args.small else BIG_TREE)
    if args.tree is None and not tree.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"building the benchmark tree in {tree} ...", flush=True)
        if args.small:
            build_tree(tree)
        else:
            build_tree(tree, BIG_SOURCES, BIG_TARGET, BIG_MAX_FILE)

    def timed_warm(fn: Callable[[], None]) -> float:
        warm_memory(args.warm)
        return timed(fn)

    work = Path(tempfile.mkdtemp(prefix="bench-registry-", dir="/var/tmp"))
    registry_proc: subprocess.Popen[bytes] | None = None
    try:
        # -- the image, once (untimed) ---------------------------------------------------
        snaps = split_tree(tree, work / "snapshots", layers)
        base_store = work / "store-base"
        out = run([lamina, "import", "--json", IMAGE, *map(str, snaps)],
                  env=store_env(base_store))
        imported = json.loads(out)
        shutil.rmtree(work / "snapshots")
        layout = work / "layout"
        run([lamina, "save", IMAGE, "-o", str(layout), "--format", "oci"],
            env=store_env(base_store))
        index = json.loads((layout / "index.json").read_text())
        top = index["manifests"][0]
        tag = top.get("annotations", {}).get("org.opencontainers.image.ref.name", "v1")
        manifest_raw = (layout / "blobs/sha256" / top["digest"].split(":", 1)[1]).read_bytes()
        manifest = json.loads(manifest_raw)
        manifest_digest = "sha256:" + hashlib.sha256(manifest_raw).hexdigest()
        blobs = [manifest["config"], *manifest["layers"]]
        layer_digests = [b["digest"] for b in manifest["layers"]]
        moved = sum(int(b["size"]) for b in blobs) + len(manifest_raw)
        print(f"image: {len(layer_digests)} gzip layers "
              + " + ".join(f"{int(b['size']) / 1e6:.1f}" for b in manifest["layers"])
              + f" MB; {len(blobs)} blobs + manifest = {moved / 1e6:.1f} MB per push or pull"
              f" (lamina import reported {len(imported.get('layers', []))} layers)")
        print(f"manifest {manifest_digest}; OCI layout tag {tag!r}")

        registry_proc, registry = start_registry(work)
        print(f"docker-registry on {registry}, storage {work / 'registry-data'}")

        stores = work / "stores"
        stores.mkdir()
        caches = work / "skopeo-caches"
        caches.mkdir()
        counter = iter(range(100000))

        def empty_cache() -> Path:
            d = caches / str(next(counter))
            d.mkdir()
            return d

        # -- push ------------------------------------------------------------------------
        push_n = {"lamina": 0, "skopeo": 0}

        def prepare_lamina_push() -> None:
            shutil.copytree(base_store, stores / f"push-{push_n['lamina']}", symlinks=True)

        def lamina_push() -> None:
            n = push_n["lamina"]
            push_n["lamina"] += 1
            dest = f"{registry}/lamina-push-{n}:v1"
            out = run([lamina, "push", "--json", "--jobs", str(args.jobs), IMAGE, dest],
                      env=lamina_env(stores / f"push-{n}"))
            results = json.loads(out)["blobs"]
            kinds = sorted({r["result"] for r in results.values()})
            if kinds != ["pushed"] or len(results) != len(blobs):
                raise SystemExit(f"lamina push to {dest}: blobs {results} (want all pushed)")

        skopeo_push_cache: list[Path] = []

        def skopeo_push() -> None:
            n = push_n["skopeo"]
            push_n["skopeo"] += 1
            dest = f"docker://{registry}/skopeo-push-{n}:v1"
            out = run(skopeo_cmd(skopeo_push_cache.pop(), [
                "copy", "--preserve-digests", "--dest-tls-verify=false",
                f"oci:{layout}:{tag}", dest]))
            if "skipped" in out:
                raise SystemExit(f"skopeo copy to {dest} skipped blobs:\n{out}")

        def library(what: str, store_dir: Path, places: tuple[Place, Place]) -> None:
            """``transfer()`` in this process (what the CLI calls), checked to move every
            blob."""
            store = Store(store_dir)
            try:
                res = transfer(store, *places, TransferOptions(
                    registry=RegistryOptions(jobs=args.jobs)))
            finally:
                store.close()
            if res.moved != len(blobs):
                raise SystemExit(f"lamina {what} (library): moved {res.moved} blobs")

        def lamina_push_library() -> None:
            n = push_n["library"]
            push_n["library"] += 1
            library("push", stores / f"libpush-{n}",
                    push_places(IMAGE, f"{registry}/library-push-{n}:v1"))

        blob_files = [str(layout / "blobs/sha256" / b["digest"].split(":", 1)[1])
                      for b in sorted(blobs, key=lambda b: -int(b["size"]))]

        def curl_push() -> None:
            n = push_n.setdefault("curl", 0)
            push_n["curl"] += 1
            subprocess.run(["bash", "-c", CURL_PUSH, "curl-push", *blob_files], check=True,
                           env={**os.environ, "REGISTRY": registry, "REPO": f"curl-push-{n}",
                                "JOBS": str(args.jobs)})

        def lamina_fixed_cost(bytecode: bool = True) -> Callable[[], None]:
            # Connection refused at once: process start, imports, argument parsing, store
            # open; what every CLI run pays before the first byte moves.
            def go() -> None:
                proc = subprocess.run(
                    [lamina, "push", "--json", IMAGE, "127.0.0.1:1/nothing:v1"],
                    capture_output=True, text=True, env=lamina_env(base_store, bytecode))
                if "connection refused" not in proc.stderr:
                    raise SystemExit(f"lamina push to a closed port: {proc.stderr}")

            return go

        push: dict[str, list[float]] = {
            "lamina push": [],
            "skopeo copy (push)": [],
            "lamina push (library)": [],
            "curl, blobs only (floor)": [],
        }
        fixed: list[float] = []
        fixed_no_pyc: list[float] = []
        push_n["library"] = 0
        lamina_fixed_cost()()   # untimed: fills the bytecode cache
        for _ in range(args.runs):
            prepare_lamina_push()
            push["lamina push"].append(timed_warm(lamina_push))
            skopeo_push_cache.append(empty_cache())
            push["skopeo copy (push)"].append(timed_warm(skopeo_push))
            shutil.copytree(base_store, stores / f"libpush-{push_n['library']}", symlinks=True)
            push["lamina push (library)"].append(timed_warm(lamina_push_library))
            push["curl, blobs only (floor)"].append(timed_warm(curl_push))
            fixed.append(timed(lamina_fixed_cost()))
            fixed_no_pyc.append(timed(lamina_fixed_cost(bytecode=False)))

        # Same blobs in the registry: skopeo pushed lamina's manifest, byte for byte.
        uploaded, mounted = uploads_in_log(work / "registry.log")
        every = {b["digest"] for b in blobs}
        for n in range(args.runs):
            for who in ("lamina", "skopeo", "library"):
                repo = f"{who}-push-{n}"
                if uploaded.get(repo) != every or repo in mounted:
                    raise SystemExit(f"{repo}: the registry log shows uploads of "
                                     f"{sorted(uploaded.get(repo, ()))}, mount: "
                                     f"{repo in mounted}; want all of {sorted(every)}")
                raw = get_manifest(registry, repo, "v1")
                got = [b["digest"] for b in json.loads(raw)["layers"]]
                if raw != manifest_raw or got != layer_digests:
                    raise SystemExit(f"{who}-push-{n}: manifest differs from lamina's "
                                     f"(layers {got})")
        print(f"every push: {len(layer_digests)} layers + config uploaded (closing PUT 201 in "
              f"the registry log, no mount), manifest {manifest_digest} in every repository")

        # -- pull ------------------------------------------------------------------------
        source = f"{registry}/lamina-push-0:v1"
        pull_n = {"lamina": 0, "skopeo": 0}

        def lamina_pull() -> None:
            n = pull_n["lamina"]
            pull_n["lamina"] += 1
            out = run([lamina, "pull", "--json", "--jobs", str(args.jobs), source],
                      env=lamina_env(stores / f"pull-{n}"))
            res = json.loads(out)
            if res["downloaded"] != len(blobs) or res["digest"] != manifest_digest:
                raise SystemExit(f"lamina pull {source}: {res}")

        skopeo_pull_cache: list[Path] = []

        def skopeo_pull() -> None:
            n = pull_n["skopeo"]
            pull_n["skopeo"] += 1
            dest = work / f"skopeo-pull-{n}"
            run(skopeo_cmd(skopeo_pull_cache.pop(), [
                "copy", "--preserve-digests", "--src-tls-verify=false",
                f"docker://{source}", f"oci:{dest}:v1"]))
            for b in blobs:
                if not (dest / "blobs/sha256" / b["digest"].split(":", 1)[1]).is_file():
                    raise SystemExit(f"skopeo pull: {b['digest']} missing in {dest}")

        def lamina_pull_library() -> None:
            n = pull_n["library"]
            pull_n["library"] += 1
            library("pull", stores / f"libpull-{n}", pull_place(source))

        def curl_pull() -> None:
            n = pull_n.setdefault("curl", 0)
            pull_n["curl"] += 1
            dest = work / f"curl-pull-{n}"
            dest.mkdir()
            names = [b["digest"].split(":", 1)[1]
                     for b in sorted(blobs, key=lambda b: -int(b["size"]))]
            subprocess.run(["bash", "-c", CURL_PULL, "curl-pull", *names], check=True,
                           env={**os.environ, "REGISTRY": registry, "DEST": str(dest),
                                "REPO": source.split("/", 1)[1].split(":", 1)[0],
                                "JOBS": str(args.jobs)})
            for b in blobs:
                got = dest / b["digest"].split(":", 1)[1]
                if got.stat().st_size != int(b["size"]):
                    raise SystemExit(f"curl pull: {got} has the wrong size")

        pull_n["library"] = 0
        pull: dict[str, list[float]] = {
            "lamina pull": [],
            "skopeo copy (pull)": [],
            "lamina pull (library)": [],
            "curl, blobs only (floor)": [],
        }
        for _ in range(args.runs):
            pull["lamina pull"].append(timed_warm(lamina_pull))
            skopeo_pull_cache.append(empty_cache())
            pull["skopeo copy (pull)"].append(timed_warm(skopeo_pull))
            pull["lamina pull (library)"].append(timed_warm(lamina_pull_library))
            pull["curl, blobs only (floor)"].append(timed_warm(curl_pull))

        # -- report ----------------------------------------------------------------------
        def report(title: str, results: dict[str, list[float]], peer: str) -> None:
            print(f"\n{title} (median of {args.runs}; runs alternate; "
                  f"{moved / 1e6:.1f} MB moved per run)")
            base = statistics.median(results[peer])
            for name, times in results.items():
                med = statistics.median(times)
                runs = " ".join(f"{t:.2f}" for t in times)
                ratio = "" if name == peer else "   " + ratio_text(base, med, peer)
                print(f"  {name:24s} {med:6.2f} s  {moved / 1e6 / med:6.1f} MB/s"
                      f"   [{runs}]{ratio}")
            # Runs alternate, so run i of each row shared the machine's state of the
            # moment: the median of the per-round ratios is steadier than the ratio of
            # the medians when the machine is noisy (other VMs, reclaimed memory).
            for name, times in results.items():
                if name != peer:
                    paired = statistics.median(p / t for p, t in zip(results[peer], times,
                                                                      strict=True))
                    print(f"  {name}: median of per-round ratios {paired:.2f}")

        report("push to docker-registry on loopback", push, "skopeo copy (push)")
        print("  lamina push: " + ratio_text(
            statistics.median(push["curl, blobs only (floor)"]),
            statistics.median(push["lamina push"]), "the floor"))
        report("pull from docker-registry on loopback", pull, "skopeo copy (pull)")
        print("  lamina pull: " + ratio_text(
            statistics.median(pull["curl, blobs only (floor)"]),
            statistics.median(pull["lamina pull"]), "the floor"))
        print("\nlamina CLI fixed cost (push to a closed port: start, imports, parsing, store)")
        for label, times in (("bytecode cached (as in the rows above)", fixed),
                             ("PYTHONDONTWRITEBYTECODE=1, editable", fixed_no_pyc)):
            print(f"  {label:40s} {statistics.median(times):6.2f} s"
                  f"   [{' '.join(f'{t:.2f}' for t in times)}]")
        print(f"lamina --jobs {args.jobs}; skopeo {skopeo_version()}; "
              f"load average {os.getloadavg()[0]:.2f}")
    finally:
        if registry_proc is not None:
            registry_proc.terminate()
            try:
                registry_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                registry_proc.kill()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


# The registry's floor: curl moving the same blobs, ``jobs`` at a time, doing nothing else
# (no digest check, no fsync, no manifest).  No client can beat what docker-registry
# itself needs to receive or serve the bytes; this row shows how close lamina gets.
CURL_PUSH = r"""
up() {
  loc=$(curl -sS -D - -o /dev/null -X POST "http://$REGISTRY/v2/$REPO/blobs/uploads/" \
        | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
  case "$loc" in http*) ;; *) loc="http://$REGISTRY$loc" ;; esac
  case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
  code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$1" \
         -H 'Content-Type: application/octet-stream' "$loc${sep}digest=sha256:${1##*/}")
  [ "$code" = 201 ] || { echo "curl upload of $1: HTTP $code" >&2; exit 1; }
}
export -f up
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c 'up {}'
"""
CURL_PULL = r"""
cd "$DEST" && printf '%s\n' "$@" | xargs -P "$JOBS" -I{} \
  curl -sS -f -o {} "http://$REGISTRY/v2/$REPO/blobs/sha256:{}"
"""


def skopeo_version() -> str:
    return run(["skopeo", "--version"]).split()[-1]


if __name__ == "__main__":
    sys.exit(main())
