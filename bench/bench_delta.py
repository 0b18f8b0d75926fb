"""Delta pull of a zstd:chunked image: lamina with v1 present against ``skopeo copy`` of
v2 (a full pull), docker-registry on 127.0.0.1, same run, alternating.

    .venv/bin/python bench/bench_delta.py [--runs N | --quick] [--files N] [--mb N]

Untimed: a tree of ``--files`` files (~``--mb`` MB: half random, half repeated text, so
the layer compresses ~2:1) plus one 1 MB file; v2 changes the first 4 KiB of that file.
lamina imports both as zstd:chunked and pushes them.  Then, alternating:

* lamina: a fresh store pulls v1 (untimed), then ``lamina pull`` of v2 (timed);
* skopeo: ``skopeo copy docker://…:v2 oci:DIR`` into a fresh directory (timed): what a
  pull that shares layers only moves.

Bytes are the body bytes docker-registry's access log records for each pull's requests
(manifests and blobs).  Medians and ratios printed (skopeo / lamina).
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import lamina_cli, ratio_text, run, timed  # noqa: E402
from bench_registry import lamina_env  # noqa: E402 - compiled modules cached, as installed

_LINE = re.compile(r'"GET /v2/\S+ HTTP/[\d.]+" (\d+) (\d+)')


def make_tree(root: Path, files: int, mb: int, changed: bool) -> None:
    each = max(1, (mb << 20) // files)
    text = (b"the quick brown fox jumps over the lazy dog " * (each // 40 + 1))
    for i in range(files):
        sub = root / f"d{i // 100:03}"
        sub.mkdir(parents=True, exist_ok=True)
        rnd = random.Random(i)
        (sub / f"f{i:05}").write_bytes(rnd.randbytes(each // 2) + text[: each - each // 2])
    big = bytearray(random.Random(-1).randbytes(1 << 20))
    if changed:
        big[:4096] = random.Random(-2).randbytes(4096)
    (root / "big.bin").write_bytes(bytes(big))


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run, a small tree")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    if args.quick:
        args.runs, args.files, args.mb = 1, 500, 20
    for tool in ("skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    lamina = lamina_cli()
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-delta-"))
    proc = None
    try:
        proc, registry, log = start_registry(work)
        builder = lamina_env(work / "builder")
        for tag, changed in (("v1", False), ("v2", True)):
            tree = work / f"tree-{tag}"
            make_tree(tree, args.files, args.mb, changed)
            run([lamina, "import", "--compression", "zstd:chunked", f"bench/delta:{tag}",
                 str(tree)], env=builder)
            run([lamina, "push", f"bench/delta:{tag}", f"{registry}/bench/delta:{tag}"],
                env=builder)
            shutil.rmtree(tree)
        times: dict[str, list[float]] = {"lamina": [], "skopeo": []}
        wire: dict[str, list[int]] = {"lamina": [], "skopeo": []}
        out = ""
        for n in range(args.runs):
            env = lamina_env(work / f"store-{n}")
            run([lamina, "pull", f"{registry}/bench/delta:v1"], env=env)
            before = log_bytes(log)

            def lamina_pull(env: dict[str, str] = env) -> None:
                nonlocal out
                out = run([lamina, "pull", f"{registry}/bench/delta:v2"], env=env)

            times["lamina"].append(timed(lamina_pull))
            wire["lamina"].append(log_bytes(log) - before)
            shutil.rmtree(work / f"store-{n}")
            before = log_bytes(log)
            dest = work / f"skopeo-{n}"
            times["skopeo"].append(timed(lambda dest=dest: run([
                "skopeo", "copy", "--src-tls-verify=false",
                f"docker://{registry}/bench/delta:v2", f"oci:{dest}:v2"]) and None))
            wire["skopeo"].append(log_bytes(log) - before)
            shutil.rmtree(dest)
        print(out.strip())
        print(f"tree: {args.files} files, ~{args.mb} MB + one 1 MiB file changed; "
              f"{args.runs} alternating runs, medians")
        for tool in ("lamina", "skopeo"):
            print(f"  {tool:7} v2 pull: {statistics.median(wire[tool]) / 1e6:8.3f} MB on the "
                  f"wire, {statistics.median(times[tool]):6.2f} s")
        lw, sw = statistics.median(wire["lamina"]), statistics.median(wire["skopeo"])
        print(f"  bytes: skopeo moves {sw / lw:.1f}\u00d7 what lamina moves; time: lamina "
              + ratio_text(statistics.median(times["skopeo"]),
                           statistics.median(times["lamina"]), "skopeo"))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
