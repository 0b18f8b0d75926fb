"""``lamina serve`` on S3 against docker-registry on S3: the same Ceph RADOS Gateway, the
same client, alternating.

    .venv/bin/python bench/bench_s3.py [--runs N | --quick] [--mb MB]

One one-node Ceph (mon, OSD on a sparse file, radosgw; tests/ceph_s3.py) is started for
the whole run and stopped at the end.  Each run gives each registry a fresh bucket and a
fresh process: ``lamina serve`` with ``[storage] driver = "s3"`` (and an empty store for
its metadata), docker-registry 2.8 (Debian) with its ``s3`` driver (``regionendpoint``,
``forcepathstyle``, ``secure: false``) on the same gateway.  Timed: ``skopeo copy``
pushing a 4-layer image (``--mb`` in all, default 320 MB of incompressible plain-tar
layers, bench_serve.py's layout) and pulling it back into a fresh OCI layout.  Runs
alternate (A B A B ...); medians and lamina/docker-registry time ratios are printed.

``--quick``: one run with a 64 MB image (smoke test).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_serve import LAMINA, build_layout, free_port, skopeo  # noqa: E402 - the sibling's

from ceph_s3 import Ceph, Gateway, missing_tools  # noqa: E402 - the tests' Ceph bring-up


def make_bucket(gw: Gateway) -> str:
    import boto3

    name = f"bench-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=gw.endpoint, region_name=gw.region,
                 aws_access_key_id=gw.access_key,
                 aws_secret_access_key=gw.secret_key).create_bucket(Bucket=name)
    return name


def drop_bucket(gw: Gateway, name: str) -> None:
    import boto3

    c = boto3.client("s3", endpoint_url=gw.endpoint, region_name=gw.region,
                     aws_access_key_id=gw.access_key, aws_secret_access_key=gw.secret_key)
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            c.delete_objects(Bucket=name, Delete={"Objects": keys})
    for up in c.list_multipart_uploads(Bucket=name).get("Uploads", []):
        c.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    c.delete_bucket(Bucket=name)


class Registry:
    def __init__(self, kind: str, work: Path, gw: Gateway) -> None:
        self.kind = kind
        self.work = work
        self.gw = gw
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        self.port = free_port()
        self.bucket = make_bucket(self.gw)
        root = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=self.work))
        gw = self.gw
        if self.kind == "lamina":
            (root / "serve.toml").write_text(
                f'[storage]\ndriver = "s3"\nendpoint = "{gw.endpoint}"\n'
                f'region = "{gw.region}"\nbucket = "{self.bucket}"\n'
                f'access_key = "{gw.access_key}"\nsecret_key = "{gw.secret_key}"\n')
            cmd = [LAMINA, "serve", "--root", str(root / "store"), "--addr", self.host,
                   "--log-level", "warning", "--config", str(root / "serve.toml")]
        else:
            (root / "config.yml").write_text(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
                "storage:\n  s3:\n"
                f"    accesskey: {gw.access_key}\n    secretkey: {gw.secret_key}\n"
                f"    region: {gw.region}\n    regionendpoint: {gw.endpoint}\n"
                f"    bucket: {self.bucket}\n    secure: false\n    v4auth: true\n"
                "    forcepathstyle: true\n    rootdirectory: /\n"
                "  delete:\n    enabled: true\n  redirect:\n    disable: true\n"
                f"http:\n  addr: {self.host}\n")
            cmd = ["/usr/bin/docker-registry", "serve", str(root / "config.yml")]
        self.root = root
        log = open(root / "log", "wb")
        # The AWS SDK for Go panics on AWS_CA_BUNDLE with its custom transport; plain
        # http to the gateway needs no CA anyway.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/v2/")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        text = (root / "log").read_text()[-2000:]
        self.stop()
        raise RuntimeError(f"{self.kind} did not start: {text}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
        drop_bucket(self.gw, self.bucket)
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mb", type=int, default=320)
    args = ap.parse_args()
    if args.quick:
        args.runs, args.mb = 1, 64
    missing = missing_tools() + [t for t in ("skopeo", "/usr/bin/docker-registry")
                                 if not shutil.which(t)]
    if missing:
        print(f"bench_s3: not installed: {', '.join(missing)}", file=sys.stderr)
        return 1
    times: dict[str, dict[str, list[float]]] = {k: {"push": [], "pull": []}
                                                for k in ("lamina", "docker-registry")}
    with tempfile.TemporaryDirectory(prefix="bench-s3-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        ceph = Ceph(work / "ceph")
        gw = ceph.start(free_port())
        try:
            layout = build_layout(work, args.mb)
            print(f"image: 4 plain-tar layers, {args.mb} MB; Ceph RGW at {gw.endpoint}; "
                  f"{args.runs} runs, alternating")
            for i in range(args.runs):
                for kind in ("lamina", "docker-registry"):
                    reg = Registry(kind, work, gw).start()
                    try:
                        ref = f"docker://{reg.host}/bench/img:v1"
                        times[kind]["push"].append(skopeo(
                            "copy", "--dest-tls-verify=false", f"oci:{layout}:v1", ref))
                        dst = Path(tempfile.mkdtemp(prefix="pull-", dir=work))
                        times[kind]["pull"].append(skopeo(
                            "copy", "--src-tls-verify=false", ref, f"oci:{dst}:v1"))
                        shutil.rmtree(dst)
                    finally:
                        reg.stop()
                    print(f"  run {i + 1} {kind:16} push {times[kind]['push'][-1]:6.2f} s  "
                          f"pull {times[kind]['pull'][-1]:6.2f} s", flush=True)
        finally:
            ceph.stop()
    med = statistics.median
    print(f"\nskopeo copy through S3 (Ceph RGW), {args.mb} MB image (median of {args.runs}; "
          "ratio < 1: lamina faster)")
    print(f"  {'':6} {'lamina serve':>14} {'docker-registry':>16} {'ratio':>7}")
    for op in ("push", "pull"):
        a, b = med(times["lamina"][op]), med(times["docker-registry"][op])
        print(f"  {op:6} {a:12.2f} s {b:14.2f} s {a / b:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
