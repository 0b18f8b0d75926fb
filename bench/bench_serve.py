"""``lamina serve`` against docker-registry, same run, same client, alternating.

    .venv/bin/python bench/bench_serve.py [--runs N | --quick] [--mb MB] [--seconds S]

1. Big blobs: one OCI layout of a 4-layer image (``--mb`` in all, default 320 MB, of
   incompressible data in plain tar layers, built once).  Each run starts a fresh
   registry (an empty store for lamina serve, an empty storage directory for
   docker-registry) on a free 127.0.0.1 port, then times ``skopeo copy`` pushing the
   layout to it and ``skopeo copy`` pulling it back into a fresh OCI layout.  Runs
   alternate (A B A B ...); medians and lamina/docker-registry time ratios are printed.
   A fresh registry per run means skopeo's blob-info cache never finds a blob to mount.
2. Many small requests: manifest GET by tag (with an OCI Accept header) from ``wrk``
   (two threads, 32 connections, ``--seconds`` each; Debian's ``wrk``) and manifest HEAD
   from four Python client processes on keep-alive connections (wrk cannot parse a HEAD
   answer that carries a Content-Length); without wrk, GET uses the Python clients too.
   Throughput and p50/p99 latency for both registries, alternating, and ratios.
   Both registries run without access logs here (their default is to log each request).

``--quick``: one run of each with a 64 MB image and 2 s request bursts (smoke test).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAMINA = str(Path(sys.executable).parent / "lamina")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the image ------------------------------------------------------------------------------
def build_layout(root: Path, total_mb: int, layers: int = 4) -> Path:
    """An OCI layout, tag ``v1``: ``layers`` plain-tar layers of random bytes."""
    layout = root / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        d = sha256(data)
        (blobs / d[7:]).write_bytes(data)
        return {"digest": d, "size": len(data)}

    descs = []
    per = total_mb * 1024 * 1024 // layers
    for i in range(layers):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"data-{i}.bin")
            info.size = per
            tar.addfile(info, io.BytesIO(os.urandom(per)))
        descs.append(put(buf.getvalue()))
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [d["digest"] for d in descs]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **d}
                   for d in descs]}).encode()
    m = put(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **m,
         "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return layout


# -- the registries ---------------------------------------------------------------------------
class Registry:
    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, access_log: bool = True) -> Registry:
        self.port = free_port()
        root = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=self.work))
        log = open(root / "log", "wb")
        if self.kind == "lamina":
            cmd = [LAMINA, "serve", "--root", str(root / "store"), "--addr", self.host,
                   "--log-level", "warning"] + ([] if access_log else ["--no-access-log"])
        else:
            (root / "config.yml").write_text(
                f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: "
                f"{'false' if access_log else 'true'}\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n")
            cmd = ["/usr/bin/docker-registry", "serve", str(root / "config.yml")]
        self.root = root
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/v2/")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not start: {(root / 'log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


def skopeo(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run(["skopeo", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def big_blobs(layout: Path, work: Path, runs: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {k: {"push": [], "pull": []}
                                                for k in ("lamina", "docker-registry")}
    for i in range(runs):
        for kind in ("lamina", "docker-registry"):
            reg = Registry(kind, work).start()
            try:
                ref = f"docker://{reg.host}/bench/img:v1"
                times[kind]["push"].append(skopeo("copy", "--dest-tls-verify=false",
                                                  f"oci:{layout}:v1", ref))
                dst = Path(tempfile.mkdtemp(prefix="pull-", dir=work))
                times[kind]["pull"].append(skopeo("copy", "--src-tls-verify=false", ref,
                                                  f"oci:{dst}:v1"))
                shutil.rmtree(dst)
            finally:
                reg.stop()
            print(f"  run {i + 1} {kind:16} push {times[kind]['push'][-1]:6.2f} s  "
                  f"pull {times[kind]['pull'][-1]:6.2f} s", flush=True)
    return times


# -- many small requests ----------------------------------------------------------------------
_WRK = re.compile(r"Requests/sec:\s+([\d.]+)")
_PCT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(url: str, method: str, seconds: float, script_dir: Path) -> tuple[float, float, float]:
    script = script_dir / f"{method}.lua"
    script.write_text(f'wrk.method = "{method}"\n'
                      f'wrk.headers["Accept"] = "{OCI_MANIFEST}"\n')
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s",
                          str(script), url], check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests against {url}:\n{out}")
    rps = float(_WRK.search(out).group(1))  # type: ignore[union-attr]
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    pct = {p: float(v) * scale[u] for p, v, u in _PCT.findall(out)}
    return rps, pct["50"], pct["99"]


def _client(args: tuple[int, str, str, float]) -> list[float]:
    port, method, path, seconds = args
    conn = http.client.HTTPConnection("127.0.0.1", port)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        conn.request(method, path, headers={"Accept": OCI_MANIFEST})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        lat.append(time.perf_counter() - t0)
    return lat


def pyclients(port: int, method: str, path: str, seconds: float) -> tuple[float, float, float]:
    with multiprocessing.Pool(4) as pool:
        lats = sorted(x for part in pool.map(_client, [(port, method, path, seconds)] * 4)
                      for x in part)
    return (len(lats) / seconds, lats[len(lats) // 2] * 1e3, lats[int(len(lats) * .99)] * 1e3)


def small_requests(layout: Path, work: Path, runs: int, seconds: float
                   ) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    regs = {k: Registry(k, work).start(access_log=False) for k in ("lamina", "docker-registry")}
    out: dict[str, dict[str, list[tuple[float, float, float]]]] = {
        k: {"HEAD": [], "GET": []} for k in regs}
    use_wrk = shutil.which("wrk") is not None
    try:
        for reg in regs.values():
            skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                   f"docker://{reg.host}/bench/small:v1")
        for i in range(runs):
            for method in ("HEAD", "GET"):
                for kind, reg in regs.items():
                    path = "/v2/bench/small/manifests/v1"
                    res = (wrk(f"http://{reg.host}{path}", method, seconds, work)
                           if use_wrk and method == "GET"
                           else pyclients(reg.port, method, path, seconds))
                    out[kind][method].append(res)
                    print(f"  run {i + 1} {method:4} {kind:16} {res[0]:8.0f} req/s  "
                          f"p50 {res[1]:6.2f} ms  p99 {res[2]:6.2f} ms", flush=True)
    finally:
        for reg in regs.values():
            reg.stop()
    print(f"  (clients: GET {'wrk -t2 -c32' if use_wrk else '4 Python processes'}, "
          "HEAD 4 Python processes)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mb", type=int, default=320)
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    if args.quick:
        args.runs, args.mb, args.seconds = 1, 64, 2
    for tool in ("skopeo", "/usr/bin/docker-registry"):
        if not shutil.which(tool):
            print(f"bench_serve: {tool} is not installed", file=sys.stderr)
            return 1
    med: Callable[[list[float]], float] = statistics.median
    with tempfile.TemporaryDirectory(prefix="bench-serve-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        layout = build_layout(work, args.mb)
        print(f"image: 4 plain-tar layers, {args.mb} MB; {args.runs} runs, alternating")
        big = big_blobs(layout, work, args.runs)
        small_layout = build_layout(work / "small", 1, 1)
        small = small_requests(small_layout, work, args.runs, args.seconds)

    print(f"\nskopeo copy, {args.mb} MB image (median of {args.runs}; ratio < 1: lamina faster)")
    print(f"  {'':6} {'lamina serve':>14} {'docker-registry':>16} {'ratio':>7}")
    for op in ("push", "pull"):
        a, b = med(big["lamina"][op]), med(big["docker-registry"][op])
        print(f"  {op:6} {a:12.2f} s {b:14.2f} s {a / b:7.2f}")
    print("\nmanifest requests (median of runs; throughput ratio > 1 and latency ratio < 1: "
          "lamina better)")
    print(f"  {'':5} {'':16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for method in ("HEAD", "GET"):
        rows = {}
        for kind in ("lamina", "docker-registry"):
            runs = small[kind][method]
            rows[kind] = (med([r[0] for r in runs]), med([r[1] for r in runs]),
                          med([r[2] for r in runs]))
            print(f"  {method:5} {kind:16} {rows[kind][0]:9.0f} {rows[kind][1]:8.2f} "
                  f"{rows[kind][2]:8.2f}")
        a, b = rows["lamina"], rows["docker-registry"]
        print(f"  {method:5} {'ratio':16} {a[0] / b[0]:9.2f} {a[1] / b[1]:8.2f} "
              f"{a[2] / b[2]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
