"""Delta pull of a zstd:chunked image: lamina with v1 present against ``skopeo copy`` of
v2 (a full pull), docker-registry on 127.0.0.1, on loopback and through a paced link;
and a cold pull of the chunked image against the same tree as plain zstd.  Same run,
alternating.

    .venv/bin/python bench/bench_delta.py [--runs N | --quick] [--files N] [--mb N]
                                          [--rate MBIT] [--rtt MS]

Untimed: a tree of ``--files`` files (~``--mb`` MB: half random, half repeated text, so
the layer compresses ~2:1) plus one 1 MB file; v2 is the same tree with the first 4 KiB
of that file rewritten in place (every other file keeps its mtime, so only that file's
tar header and payload change).  lamina imports both as zstd:chunked, and v1 also as
plain zstd, and pushes them.  Then,
each round:

* cold: ``lamina pull`` of chunked v1 into a fresh store, then of plain-zstd v1 into
  another fresh store (both timed);
* lamina: ``lamina pull`` of v2 into the store holding v1 (timed);
* skopeo: ``skopeo copy docker://…:v2 oci:DIR`` into a fresh directory (timed): what a
  pull that shares layers only moves;
* unless ``--rate 0``: the same two through ``linkproxy.LinkProxy`` (``--rate`` Mbit/s each
  way, ``--rtt`` ms), v1 pulled over loopback first (untimed).

Bytes on loopback are the body bytes docker-registry's access log records for each pull's
requests (manifests and blobs); through the link, the bytes the proxy carried from the
registry.  Medians and ratios printed (skopeo / lamina; chunked / plain).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import lamina_cli, ratio_text, run  # noqa: E402
from bench_registry import lamina_env  # noqa: E402 - compiled modules cached, as installed
from linkproxy import LinkProxy  # noqa: E402

_LINE = re.compile(r'"GET /v2/\S+ HTTP/[\d.]+" (\d+) (\d+)')


def make_tree(root: Path, files: int, mb: int, changed: bool) -> None:
    each = max(1, (mb << 20) // files)
    text = (b"the quick brown fox jumps over the lazy dog " * (each // 40 + 1))
    for i in range(files):
        sub = root / f"d{i // 100:03}"
        sub.mkdir(parents=True, exist_ok=True)
        rnd = random.Random(i)
        (sub / f"f{i:05}").write_bytes(rnd.randbytes(each // 2) + text[: each - each // 2])
    write_big(root, changed)


def write_big(root: Path, changed: bool) -> None:
    """The 1 MiB file; ``changed``: its first 4 KiB differ (rewritten in place, so only its
    own mtime moves, as when one file of an image changes)."""
    big = bytearray(random.Random(-1).randbytes(1 << 20))
    if changed:
        big[:4096] = random.Random(-2).randbytes(4096)
    (root / "big.bin").write_bytes(bytes(big))


def push_versions(lamina: str, registry: str, work: Path, repo: str, files: int, mb: int,
                  versions: list[tuple[str, str]], env: dict[str, str]) -> None:
    """The tree of ``files`` files (~``mb`` MB) imported and pushed as ``repo:TAG`` for
    each ``(compression, TAG)``; the 1 MiB file changes before the tag ``v2``."""
    tree = work / "tree"
    make_tree(tree, files, mb, changed=False)
    for compression, tag in versions:
        if tag == "v2":
            write_big(tree, changed=True)
        run([lamina, "import", "--compression", compression, f"{repo}:{tag}", str(tree)],
            env=env)
        run([lamina, "push", f"{repo}:{tag}", f"{registry}/{repo}:{tag}"], env=env)
    shutil.rmtree(tree)


@contextlib.contextmanager
def paced_link(registry: str, args: argparse.Namespace) -> Iterator[LinkProxy | None]:
    """A proxy to ``registry`` paced to ``--rate`` Mbit/s and ``--rtt`` ms, or None with
    ``--rate 0`` (loopback rows only)."""
    if args.rate <= 0:
        yield None
        return
    host, port = registry.split(":")
    with LinkProxy(host, int(port), args.rate, args.rtt) as proxy:
        yield proxy


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")


def stop(proc: subprocess.Popen[bytes] | None, work: Path) -> None:
    """Stop the registry ``start_registry`` started and remove the benchmark's directory."""
    if proc is not None:
        proc.terminate()
        proc.wait()
    shutil.rmtree(work, ignore_errors=True)


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'registry-data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    log = work / "registry.log"
    proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return proc, f"127.0.0.1:{port}", log
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"docker-registry did not start; see {log}")


def log_bytes(log: Path) -> int:
    time.sleep(0.1)   # the line is written as the response completes
    return sum(int(m.group(2)) for line in log.read_text(errors="replace").splitlines()
               if (m := _LINE.search(line)))


def _median(xs: list[float] | list[int]) -> float:
    return float(statistics.median(xs))


def _runs(xs: list[float]) -> str:
    return f"  (runs {' '.join(f'{x:.2f}' for x in xs)})" if len(xs) > 1 else ""


def parse_args(doc: str) -> argparse.Namespace:
    """The options of a benchmark of v2 with v1 present (this one, bench_ocidelta)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run, a small tree")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--rate", type=float, default=100.0,
                    help="Mbit/s of the paced link (0: loopback rows only)")
    ap.add_argument("--rtt", type=float, default=20.0, help="ms round trip of the paced link")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.files, args.mb = 1, 500, 20
    return args


def print_pairs(args: argparse.Namespace, linked: bool, title: str,
                times: dict[str, list[float]], wire: dict[str, list[int]]) -> None:
    """lamina's and skopeo's medians (bytes, seconds) and ratios, loopback and link."""
    print(f"tree: {args.files} files, ~{args.mb} MB + one 1 MiB file changed; "
          f"{args.runs} alternating runs, medians")
    links = [("loopback", "")] + ([(f"{args.rate:g} Mbit/s, {args.rtt:g} ms RTT",
                                    "@link")] if linked else [])
    for label, suffix in links:
        print(f" {title}, {label}:")
        for tool in ("lamina", "skopeo"):
            print(f"  {tool:7} {_median(wire[tool + suffix]) / 1e6:8.3f} MB on the wire, "
                  f"{_median(times[tool + suffix]):6.2f} s{_runs(times[tool + suffix])}")
        lw, sw = _median(wire["lamina" + suffix]), _median(wire["skopeo" + suffix])
        print(f"  bytes: skopeo moves {sw / lw:.1f}\u00d7 what lamina moves; time: lamina "
              + ratio_text(_median(times["skopeo" + suffix]),
                           _median(times["lamina" + suffix]), "skopeo"))


def main() -> int:
    args = parse_args(__doc__ or "")
    require("skopeo", "docker-registry")
    lamina = lamina_cli()
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-delta-"))
    proc = None
    try:
        proc, registry, log = start_registry(work)
        push_versions(lamina, registry, work, "bench/delta", args.files, args.mb,
                      [("zstd:chunked", "v1"), ("zstd", "v1-zstd"), ("zstd:chunked", "v2")],
                      lamina_env(work / "builder"))
        with paced_link(registry, args) as proxy:
            times, wire, out = _rounds(args.runs, lamina, work, registry, log, proxy)
        print(out.strip())
        print_pairs(args, proxy is not None, "v2 with v1 present", times, wire)
        print(" cold pull of v1 into an empty store, loopback (lamina both):")
        for key, label in (("cold-chunked", "zstd:chunked"), ("cold-zstd", "plain zstd")):
            print(f"  {label:13} {_median(wire[key]) / 1e6:8.3f} MB, "
                  f"{_median(times[key]):6.2f} s{_runs(times[key])}")
        slower = _median(times["cold-chunked"]) / _median(times["cold-zstd"])
        rounds = [a / b for a, b in zip(times["cold-chunked"], times["cold-zstd"], strict=True)]
        print(f"  chunked / plain: {slower:.2f}\u00d7 the time "
              f"(median of per-round ratios {_median(rounds):.2f}\u00d7)")
    finally:
        stop(proc, work)
    return 0


def _rounds(runs: int, lamina: str, work: Path, registry: str, log: Path,
            proxy: LinkProxy | None) -> tuple[dict[str, list[float]], dict[str, list[int]], str]:
    """Alternating rounds: cold chunked / cold plain zstd, then lamina's delta / skopeo's
    full pull of v2 on loopback, then both again through ``proxy``."""
    times: dict[str, list[float]] = {}
    wire: dict[str, list[int]] = {}
    out = ""

    def measure(key: str, cmd: list[str], env: dict[str, str] | None = None,
                via: LinkProxy | None = None) -> None:
        nonlocal out
        before = via.down if via else log_bytes(log)
        start = time.perf_counter()
        result = run(cmd, env=env)
        times.setdefault(key, []).append(time.perf_counter() - start)
        wire.setdefault(key, []).append((via.down if via else log_bytes(log)) - before)
        if cmd[0] == lamina:
            out = result

    def skopeo(dest: Path, reg: str) -> list[str]:
        return ["skopeo", "copy", "--src-tls-verify=false",
                f"docker://{reg}/bench/delta:v2", f"oci:{dest}:v2"]

    for n in range(runs):
        env = lamina_env(work / f"store-{n}")
        measure("cold-chunked", [lamina, "pull", f"{registry}/bench/delta:v1"], env)
        measure("cold-zstd", [lamina, "pull", f"{registry}/bench/delta:v1-zstd"],
                lamina_env(work / f"plain-{n}"))
        shutil.rmtree(work / f"plain-{n}")
        measure("lamina", [lamina, "pull", f"{registry}/bench/delta:v2"], env)
        shutil.rmtree(work / f"store-{n}")
        measure("skopeo", skopeo(work / f"skopeo-{n}", registry))
        shutil.rmtree(work / f"skopeo-{n}")
        if proxy is None:
            continue
        linked = f"127.0.0.1:{proxy.port}"
        env = lamina_env(work / f"link-{n}")
        run([lamina, "pull", f"{registry}/bench/delta:v1"], env=env)
        measure("lamina@link", [lamina, "pull", f"{linked}/bench/delta:v2"], env, proxy)
        shutil.rmtree(work / f"link-{n}")
        measure("skopeo@link", skopeo(work / f"skopeo-link-{n}", linked), via=proxy)
        shutil.rmtree(work / f"skopeo-link-{n}")
    return times, wire, out


if __name__ == "__main__":
    sys.exit(main())
