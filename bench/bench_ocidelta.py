"""Delta copy into an OCI layout: ``lamina copy docker://…:v2 oci:DIR:v2`` with v1 already
in DIR against ``skopeo copy`` of the same into its own layout holding v1, docker-registry
on 127.0.0.1, on loopback and through a paced link.  Same run, alternating.

    .venv/bin/python bench/bench_ocidelta.py [--runs N | --quick] [--files N] [--mb N]
                                             [--rate MBIT] [--rtt MS]

Untimed: bench_delta's tree (``--files`` files, ~``--mb`` MB, plus one 1 MiB file whose
first 4 KiB v2 rewrites), imported by lamina as zstd:chunked v1 and v2 and pushed.  Each
round, for lamina then skopeo: a fresh layout, v1 copied into it (untimed), then v2
(timed), on loopback; unless ``--rate 0``, again through ``linkproxy.LinkProxy``
(``--rate`` Mbit/s each way, ``--rtt`` ms), v1 copied over loopback first.  skopeo 1.9
reuses a blob an ``oci:`` layout has (layer-level sharing) and fetches every other blob
whole; lamina reads the frames of the layout's chunked blobs from their TOCs and fetches
only the rest (transport/layout_delta.py).  Bytes: docker-registry's access log (body
bytes) on loopback, the proxy's count through the link.  Medians and ratios printed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_delta import (  # noqa: E402
    log_bytes,
    paced_link,
    parse_args,
    print_pairs,
    push_versions,
    require,
    start_registry,
    stop,
)
from bench_layer import lamina_cli, run  # noqa: E402
from bench_registry import lamina_env  # noqa: E402
from linkproxy import LinkProxy  # noqa: E402

REPO = "bench/ocidelta"


def main() -> int:
    args = parse_args(__doc__ or "")
    require("skopeo", "docker-registry")
    lamina = lamina_cli()
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-ocidelta-"))
    proc = None
    try:
        proc, registry, log = start_registry(work)
        push_versions(lamina, registry, work, REPO, args.files, args.mb,
                      [("zstd:chunked", "v1"), ("zstd:chunked", "v2")],
                      lamina_env(work / "store"))
        with paced_link(registry, args) as proxy:
            times, wire, out = _rounds(args.runs, lamina, lamina_env(work / "copier"), work,
                                       registry, log, proxy)
        print(out.strip())
        print_pairs(args, proxy is not None, "copy v2 into oci:DIR holding v1", times, wire)
    finally:
        stop(proc, work)
    return 0


def _rounds(runs: int, lamina: str, env: dict[str, str], work: Path, registry: str,
            log: Path, proxy: LinkProxy | None
            ) -> tuple[dict[str, list[float]], dict[str, list[int]], str]:
    times: dict[str, list[float]] = {}
    wire: dict[str, list[int]] = {}
    out = ""
    tools = {
        "lamina": lambda src, dst: [lamina, "copy", f"docker://{src}", f"oci:{dst}"],
        "skopeo": lambda src, dst: ["skopeo", "copy", "--src-tls-verify=false",
                                    f"docker://{src}", f"oci:{dst}"],
    }
    for n in range(runs):
        for suffix, via in [("", None)] + ([("@link", proxy)] if proxy else []):
            reg = f"127.0.0.1:{via.port}" if via else registry
            for tool, cmd in tools.items():
                layout = work / f"{tool}{suffix}-{n}"
                run(cmd(f"{registry}/{REPO}:v1", f"{layout}:v1"), env=env)
                before = via.down if via else log_bytes(log)
                start = time.perf_counter()
                result = run(cmd(f"{reg}/{REPO}:v2", f"{layout}:v2"), env=env)
                times.setdefault(tool + suffix, []).append(time.perf_counter() - start)
                wire.setdefault(tool + suffix, []).append(
                    (via.down if via else log_bytes(log)) - before)
                if tool == "lamina" and not suffix:
                    out = result
                shutil.rmtree(layout)
    return times, wire, out


if __name__ == "__main__":
    sys.exit(main())
