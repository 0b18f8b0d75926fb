"""``lamina serve`` replicas on PostgreSQL metadata, against one replica on SQLite and
against docker-registry, same run, same client, alternating.

    .venv/bin/python bench/bench_replicas.py [--runs N | --quick] [--mb MB] [--s3]

Two OCI layouts of 4 plain-tar layers each (``--mb`` per image, default 200 MB, random
bytes, built once).  Each run starts fresh registries on free 127.0.0.1 ports over one
blob directory, then two ``skopeo copy`` clients push the two images at once — client 1
to the first registry process, client 2 to the second (the same one when there is one)
— and then pull them back at once, each from the *other* process (so with two replicas
every pull reads what the other replica took).  Setups:

    docker-registry   filesystem storage (one process)
    lamina sqlite     lamina serve on the store's SQLite metadata (one process)
    lamina pg ×1      lamina serve on PostgreSQL metadata (one process)
    lamina pg ×2      two lamina serve replicas on one PostgreSQL database

``--s3``: the blobs in S3 instead — one Ceph RADOS Gateway for the whole run
(tests/ceph_s3.py, as bench_s3.py), a fresh bucket per run, docker-registry with its
``s3`` driver on it, and each lamina replica with a store root of its own (two machines).

PostgreSQL 15 (Debian's) runs in a temp dir for the whole run (tests/server/pg_fixture.py).
Medians of the wall time of each concurrent pair and MB/s, with ratios against
docker-registry (ratio < 1: faster than docker-registry) and of pg ×2 against pg ×1.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "server"))

sys.path.insert(0, str(HERE.parent / "tests"))

import bench_s3  # noqa: E402
from bench_serve import LAMINA, Registry, build_layout, free_port  # noqa: E402
from pg_fixture import Postgres  # noqa: E402

SETUPS = ("docker-registry", "lamina sqlite", "lamina pg x1", "lamina pg x2")


class Lamina:
    """``n`` lamina serve processes on one store root (and ``url``'s database)."""

    def __init__(self, work: Path, n: int, url: str | None,
                 gw: bench_s3.Gateway | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lamina-", dir=work))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.hosts: list[str] = []
        self.gw = gw
        self.bucket = bench_s3.make_bucket(gw) if gw else None
        text = f'[metadata]\nurl = "{url}"\n' if url else ""
        if gw:
            text += (f'[storage]\ndriver = "s3"\nendpoint = "{gw.endpoint}"\n'
                     f'region = "{gw.region}"\nbucket = "{self.bucket}"\n'
                     f'access_key = "{gw.access_key}"\nsecret_key = "{gw.secret_key}"\n')
        (self.root / "serve.toml").write_text(text)
        cfg = ["--config", str(self.root / "serve.toml")]
        for i in range(n):
            host = f"127.0.0.1:{free_port()}"
            log = open(self.root / f"log-{i}", "wb")
            self.procs.append(subprocess.Popen(
                # on S3, a root each: nothing shared but the bucket and the database
                [LAMINA, "serve", "--root", str(self.root / f"store{i if gw else ''}"),
                 "--addr", host,
                 "--log-level", "warning", "--no-access-log", *cfg],
                stdout=log, stderr=subprocess.STDOUT))
            self.hosts.append(host)
            _wait(host, self.root / f"log-{i}")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(30)
        if self.gw and self.bucket:
            bench_s3.drop_bucket(self.gw, self.bucket)
        shutil.rmtree(self.root, ignore_errors=True)


def _wait(host: str, log: Path) -> None:
    import http.client

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection(*host.split(":"), timeout=1)
            c.request("GET", "/v2/")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host} did not start: {log.read_text()[-2000:]}")


def _pair(cmds: list[list[str]]) -> float:
    """Run the commands at once; the wall time until both are done."""
    errors: list[str] = []

    def run(cmd: list[str]) -> None:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            errors.append(p.stderr[-1000:])

    threads = [threading.Thread(target=run, args=(c,)) for c in cmds]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    if errors:
        raise RuntimeError("\n".join(errors))
    return took


def one_run(setup: str, layouts: list[Path], work: Path, pg: Postgres,
            gw: bench_s3.Gateway | None) -> tuple[float, float]:
    reg: Registry | bench_s3.Registry | Lamina
    if setup == "docker-registry":
        reg = bench_s3.Registry("docker-registry", work, gw).start() if gw else \
            Registry("docker-registry", work).start(access_log=False)
        hosts = [reg.host, reg.host]
    else:
        n = 2 if setup.endswith("x2") else 1
        reg = Lamina(work, n, pg.new_database() if "pg" in setup else None, gw)
        hosts = reg.hosts * (2 // n)
    try:
        refs = [f"{hosts[i]}/bench/img{i}:v1" for i in range(2)]
        push = _pair([["skopeo", "copy", "--dest-tls-verify=false", f"oci:{lay}:v1",
                       f"docker://{ref}"] for lay, ref in zip(layouts, refs, strict=True)])
        dsts = [Path(tempfile.mkdtemp(prefix="pull-", dir=work)) for _ in range(2)]
        # each pull through the other process
        pulls = [f"{hosts[1 - i]}/bench/img{i}:v1" for i in range(2)]
        pull = _pair([["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}",
                       f"oci:{dst}:v1"] for ref, dst in zip(pulls, dsts, strict=True)])
        for d in dsts:
            shutil.rmtree(d)
    finally:
        reg.stop()
    return push, pull


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--s3", action="store_true", help="blobs in S3 (a Ceph gateway)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.mb = 1, 32
    for tool in ("skopeo", "/usr/bin/docker-registry", "/usr/lib/postgresql/15/bin/initdb"):
        if not shutil.which(tool):
            print(f"bench_replicas: {tool} is not installed", file=sys.stderr)
            return 1
    times: dict[str, dict[str, list[float]]] = {s: {"push": [], "pull": []} for s in SETUPS}
    if args.s3 and bench_s3.missing_tools():
        print(f"bench_replicas: not installed: {', '.join(bench_s3.missing_tools())}",
              file=sys.stderr)
        return 1
    pg = Postgres()
    try:
        pg.first_start()
        with tempfile.TemporaryDirectory(prefix="bench-replicas-", dir="/var/tmp") as tmp:
            work = Path(tmp)
            ceph = bench_s3.Ceph(work / "ceph") if args.s3 else None
            try:
                gw = ceph.start(free_port()) if ceph is not None else None
                layouts = [build_layout(work / f"image{i}", args.mb) for i in range(2)]
                print(f"two images of 4 plain-tar layers, {args.mb} MB each, pushed and "
                      f"pulled by two skopeo clients at once; {args.runs} runs, alternating; "
                      f"blobs {'in S3 (Ceph RGW)' if gw else 'in one directory'}")
                for i in range(args.runs):
                    for setup in SETUPS:
                        push, pull = one_run(setup, layouts, work, pg, gw)
                        times[setup]["push"].append(push)
                        times[setup]["pull"].append(pull)
                        print(f"  run {i + 1} {setup:16} push {push:6.2f} s  "
                              f"pull {pull:6.2f} s", flush=True)
            finally:
                if ceph is not None:
                    ceph.stop()
    finally:
        pg.close()
    mb = 2 * args.mb
    med = statistics.median
    print(f"\n{mb} MB per direction (median of {args.runs}; ratio < 1: faster than "
          "docker-registry)")
    print(f"  {'':16} {'push s':>8} {'MB/s':>7} {'ratio':>6}   {'pull s':>8} {'MB/s':>7} "
          f"{'ratio':>6}")
    base = {op: med(times["docker-registry"][op]) for op in ("push", "pull")}
    for setup in SETUPS:
        cells = []
        for op in ("push", "pull"):
            t = med(times[setup][op])
            cells.append(f"{t:8.2f} {mb / t:7.0f} {t / base[op]:6.2f}")
        print(f"  {setup:16} {'   '.join(cells)}")
    for op in ("push", "pull"):
        one, two = med(times["lamina pg x1"][op]), med(times["lamina pg x2"][op])
        print(f"  {op}: pg x2 / pg x1 time ratio {two / one:.2f}; "
              f"pg x1 / sqlite {one / med(times['lamina sqlite'][op]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
