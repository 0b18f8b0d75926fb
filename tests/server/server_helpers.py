"""Helpers for the server tests: images made of random blobs, pushes through the API,
and ``lamina serve`` as a real process."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lamina_testing import LAMINA, need, wait_for_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ALGORITHMS = ("sha256", "sha512")


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def config_blob(tag: str = "x", diff_ids: list[str] | None = None) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "author": tag,
                       "rootfs": {"type": "layers", "diff_ids": diff_ids or []}},
                      indent="\t").encode()


def descriptor(media_type: str, data: bytes, algorithm: str = "sha256",
               **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data, algorithm), "size": len(data),
            **extra}


@dataclass
class Image:
    """A manifest, its config and layers (raw bytes), digests in one algorithm."""

    config: bytes
    layers: list[bytes]
    algorithm: str = "sha256"
    media_type: str = OCI_MANIFEST
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest(self) -> bytes:
        docker = self.media_type == DOCKER_MANIFEST
        obj: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": self.media_type,
            "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, self.config,
                                 self.algorithm),
            "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, b, self.algorithm)
                       for b in self.layers]}
        obj.update(self.extra)
        return json.dumps(obj, indent="\t").encode()

    @property
    def digest(self) -> str:
        return digest_of(self.manifest, self.algorithm)

    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def make_image(seed: int, n_layers: int = 2, size: int = 3000, algorithm: str = "sha256",
               media_type: str = OCI_MANIFEST) -> Image:
    return Image(config_blob(f"image-{seed}"),
                 [random_bytes(size, seed * 100 + i) for i in range(n_layers)], algorithm,
                 media_type)


# -- pushing through the API (async httpx client) -------------------------------------------
async def push_blob(c: httpx.AsyncClient, repo: str, data: bytes,
                    algorithm: str = "sha256") -> httpx.Response:
    r = await c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = await c.put(r.headers["location"], params={"digest": digest_of(data, algorithm)},
                    content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r


async def push_manifest(c: httpx.AsyncClient, repo: str, ref: str, raw: bytes,
                        media_type: str = OCI_MANIFEST) -> httpx.Response:
    return await c.put(f"/v2/{repo}/manifests/{ref}", content=raw,
                       headers={"Content-Type": media_type})


async def push_image(c: httpx.AsyncClient, repo: str, ref: str, image: Image) -> str:
    for b in image.blobs():
        await push_blob(c, repo, b, image.algorithm)
    r = await push_manifest(c, repo, ref, image.manifest, image.media_type)
    assert r.status_code == 201, r.text
    return image.digest


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"errors"}, body
    return str(body["errors"][0]["code"])


# -- lamina serve as a process --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``lamina serve --root ROOT`` on a free loopback port; its log is kept."""

    def __init__(self, root: Path, log: Path, *extra: str, tls: bool = False) -> None:
        self.root = root
        self.log = log
        self.extra = extra
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> Serve:
        for _ in range(5):
            self.port = free_port()
            env = {**os.environ, "LAMINA_ROOT": str(self.root)}
            env.pop("LAMINA_DEBUG", None)
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [LAMINA, "serve", "--root", str(self.root), "--addr", self.host,
                     *self.extra], stdout=log, stderr=subprocess.STDOUT, env=env)
            if self._wait():
                return self
            self.stop()
        raise RuntimeError(f"lamina serve did not start:\n{self.log.read_text()[-3000:]}")

    def _wait(self) -> bool:
        assert self.proc is not None
        return wait_for_registry(self.proc, self.url)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        self.proc = None
        return code


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([need("skopeo"), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed:\n{proc.stderr}")
    return proc
