"""Pull v2 of a zstd:chunked image with v1 present: lamina's delta pull against Podman's
partial pull of the same lamina-written layers (Debian 12's podman 4.3, containers/
storage 1.43, ``enable_partial_images``), docker-registry on 127.0.0.1, same run,
alternating; Podman's ordinary pull (partial pulls off) as what layer-level sharing moves.

    .venv/bin/python bench/bench_podman_partial.py [--runs N | --quick] [--files N] [--mb N]

Untimed: bench_delta's tree (``--files`` files, ~``--mb`` MB, half random, half text,
plus one 1 MiB file; v2 rewrites the first 4 KiB of that file), imported by lamina as
zstd:chunked (v1, v2) and pushed.  Each round, in a fresh store or storage, v1 pulled
first (untimed), then v2 timed:

* lamina: ``lamina pull …:v2`` (keeps the new frames; files are written when a container
  or build mounts the image);
* lamina + unpack: the same, then ``lamina unpack …:v2 DIR`` (every file written, as
  Podman's pull does), timed together;
* podman partial: ``podman pull …:v2`` (reads the TOC, copies the files it has from v1's
  layer, fetches the rest by Range, writes the new layer's files);
* podman full: the same with ``enable_partial_images = "false"``: the whole v2 blob.

Bytes are the body bytes docker-registry's access log records for the timed pull
(manifest, config, TOC, frames).  Everything lives on the root file system (ext4) under
/tmp and is removed at the end only.  Medians and ratios printed.  Needs root (Podman's
overlay storage); without it the benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_delta import log_bytes, push_versions, require, start_registry, stop  # noqa: E402
from bench_layer import lamina_cli, ratio_text, run  # noqa: E402
from bench_registry import lamina_env  # noqa: E402

from podman_peer import Podman  # noqa: E402 - the tests' isolated podman

ROWS = ("lamina", "lamina+unpack", "podman-partial", "podman-full")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run, a small tree")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    if args.quick:
        args.runs, args.files, args.mb = 1, 500, 20
    if os.geteuid() != 0:
        print("bench_podman_partial: needs root (podman's overlay storage)")
        return 0
    require("podman", "docker-registry")
    lamina = lamina_cli()
    # short: podman refuses a run root longer than 50 characters
    work = Path(tempfile.mkdtemp(prefix="lamina-bpp-", dir="/tmp"))
    proc = None
    try:
        proc, registry, log = start_registry(work)
        push_versions(lamina, registry, work, "bench/pp", args.files, args.mb,
                      [("zstd:chunked", "v1"), ("zstd:chunked", "v2")],
                      lamina_env(work / "builder"))
        times, wire = _rounds(args.runs, lamina, work, registry, log)
    finally:
        stop(proc, work)
    print(f"tree: {args.files} files, ~{args.mb} MB + one 1 MiB file whose first 4 KiB "
          f"change in v2; pull of v2 with v1 present, loopback; {args.runs} alternating "
          "runs, medians")
    for key in ROWS:
        runs = " ".join(f"{t:.2f}" for t in times[key])
        print(f"  {key:15} {_median(wire[key]) / 1e6:8.3f} MB  {_median(times[key]):6.2f} s"
              f"  (runs {runs})")
    lw, pw = _median(wire["lamina"]), _median(wire["podman-partial"])
    print(f"  bytes: podman's partial pull moves {pw / lw:.2f}\u00d7 what lamina's delta pull "
          f"moves; its full pull {_median(wire['podman-full']) / lw:.1f}\u00d7")
    print("  time: lamina pull " + ratio_text(_median(times["podman-partial"]),
                                              _median(times["lamina"]), "podman's partial pull"))
    print("        lamina pull + unpack " + ratio_text(
        _median(times["podman-partial"]), _median(times["lamina+unpack"]),
        "podman's partial pull"))
    return 0


def _median(xs: list[float] | list[int]) -> float:
    return float(statistics.median(xs))


def _rounds(runs: int, lamina: str, work: Path, registry: str, log: Path
            ) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    times: dict[str, list[float]] = {k: [] for k in ROWS}
    wire: dict[str, list[int]] = {k: [] for k in ROWS}
    v1, v2 = f"{registry}/bench/pp:v1", f"{registry}/bench/pp:v2"

    def measure(key: str, pull: Callable[[], object]) -> None:
        before = log_bytes(log)
        start = time.perf_counter()
        pull()
        times[key].append(time.perf_counter() - start)
        wire[key].append(log_bytes(log) - before)

    # Nothing is deleted before the end: on this ext4, creating files is slow for minutes
    # after a large rm -rf, and Podman and unpack create every file.
    podmans: list[Podman] = []
    try:
        for n in range(runs):
            for key in ROWS:
                place = work / f"{key}-{n}"
                if key.startswith("lamina"):
                    env = lamina_env(place)
                    run([lamina, "pull", v1], env=env)
                    steps = [[lamina, "pull", v2]]
                    if key == "lamina+unpack":
                        steps.append([lamina, "unpack", v2, str(place / "rootfs")])
                    measure(key, lambda env=env, steps=steps: [run(c, env=env) for c in steps])
                    continue
                podman = Podman(place, registry, partial=key == "podman-partial")
                podmans.append(podman)
                podman.pull(v1, debug=False)
                measure(key, lambda podman=podman: podman.pull(v2, debug=False))
    finally:
        for podman in podmans:
            podman.close()
    return times, wire


if __name__ == "__main__":
    sys.exit(main())
