"""Known images for the inspect tests: snapshots whose every figure is worked out here.

``make_snapshots`` writes five full snapshots of one root; ``lamina import`` turns them
into two images that share their first two layers:

    layer                 files written (bytes)                         files_size
    1 base    (A and B)   /bin/tool 1000 (0755), /bin/t -> tool,        9300
                          /etc/conf 100, /data/big 5000, /data/old 3000,
                          /opt/keep 200
    2 shared  (A and B)   /app/main 400 (added), /etc/conf 150 (modified)  550
    3 a3      (A)         /data/big 6000 (modified), /data/old deleted,  6030
                          /etc/motd "a"*10, /etc/same "s"*20 (added)
    4 a4      (A)         chmod 0700 /bin/tool: the same 1000 bytes again  1000
    3 b3      (B)         /app/b 50 (added), /opt deleted (with keep),      80
                          /etc/motd "b"*10, /etc/same "s"*20 (added)

``write_opaque_layout`` hand-writes an OCI layout whose second layer makes /d opaque.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lamina_testing import Lamina, tar_bytes

MTIME = 1600000000

# Every figure the tests assert, derived from the table above.
A_TOTAL = 9300 + 550 + 6030 + 1000                  # 16880 bytes of files in A's layers
A_FINAL = 1000 + 150 + 6000 + 200 + 400 + 10 + 20   # 7780 visible in A's final root
A_WASTED = 100 + 5000 + 3000 + 1000                 # 9100 = A_TOTAL - A_FINAL
B_TOTAL = 9300 + 550 + 80                           # 9930
B_WASTED = 100 + 200                                # 300: /etc/conf v1, /opt/keep


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, (MTIME, MTIME))


def make_snapshots(root: Path) -> Path:
    """Snapshots base, shared, a3, a4, b3 under ``root`` (see the module docstring)."""
    base = root / "base"
    _write(base / "bin/tool", b"T" * 1000, 0o755)
    os.symlink("tool", base / "bin/t")
    _write(base / "etc/conf", b"c" * 100)
    _write(base / "data/big", b"B" * 5000)
    _write(base / "data/old", b"O" * 3000)
    _write(base / "opt/keep", b"K" * 200)
    shared = root / "shared"
    shutil.copytree(base, shared, symlinks=True)
    _write(shared / "app/main", b"M" * 400)
    _write(shared / "etc/conf", b"C" * 150)
    a3 = root / "a3"
    shutil.copytree(shared, a3, symlinks=True)
    (a3 / "data/old").unlink()
    _write(a3 / "data/big", b"b" * 6000)
    _write(a3 / "etc/motd", b"a" * 10)
    _write(a3 / "etc/same", b"s" * 20)
    a4 = root / "a4"
    shutil.copytree(a3, a4, symlinks=True)
    os.chmod(a4 / "bin/tool", 0o700)
    b3 = root / "b3"
    shutil.copytree(shared, b3, symlinks=True)
    _write(b3 / "app/b", b"x" * 50)
    shutil.rmtree(b3 / "opt")
    _write(b3 / "etc/motd", b"b" * 10)
    _write(b3 / "etc/same", b"s" * 20)
    return root


def write_opaque_layout(path: Path) -> None:
    """An OCI layout, tag ``latest``, two layers:
    1: /d/x (10 bytes), /d/y (20 bytes);  2: /d made opaque, /d/z (5 bytes)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        hexd = hashlib.sha256(data).hexdigest()
        (blobs / hexd).write_bytes(data)
        return {"digest": f"sha256:{hexd}", "size": len(data)}

    tars = [tar_bytes([("d/", None), ("d/x", b"x" * 10), ("d/y", b"y" * 20)]),
            tar_bytes([("d/", None), ("d/.wh..wh..opq", b""), ("d/z", b"z" * 5)])]
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               **put(gzip.compress(t, mtime=0))} for t in tars]
    config = {"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
              "rootfs": {"type": "layers", "diff_ids": [
                  "sha256:" + hashlib.sha256(t).hexdigest() for t in tars]},
              "history": [{"created_by": "make d"}, {"created_by": "replace d"}]}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())},
                "layers": layers}
    mdesc = put(json.dumps(manifest).encode())
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


@dataclass
class KnownImages:
    lamina: Lamina          # a store with test/a and test/b (do not change it)
    oci: Path               # lamina save --format oci test/a test/b
    archive: Path           # lamina save test/a test/b (docker-archive)
    opaque: Path            # a hand-written OCI layout with an opaque directory

    def sources(self, name: str) -> list[str]:
        """The same image from the store, the OCI layout and the docker archive."""
        return [f"test/{name}", f"oci:{self.oci}:test/{name}:latest",
                f"docker-archive:{self.archive}:test/{name}:latest"]
