"""Helpers shared by the tests: the real lamina CLI in a store, peers, tree listings."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LAMINA = str(Path(sys.executable).parent / "lamina")
EPOCH = "1700000000"


def need(tool: str) -> str:
    """Path of a peer tool. Missing under CI=true is a failure, elsewhere a skip."""
    path = shutil.which(tool) or (f"/usr/bin/{tool}" if os.path.exists(f"/usr/bin/{tool}")
                                  else None)
    if path is None:
        msg = f"{tool} is not installed (apt-get install {tool})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Lamina:
    """Runs the installed ``lamina`` command against one store."""

    def __init__(self, root: Path, cwd: Path) -> None:
        self.root = root
        self.cwd = cwd
        self.env = {**os.environ, "LAMINA_ROOT": str(root), "SOURCE_DATE_EPOCH": EPOCH}
        self.env.pop("LAMINA_DEBUG", None)

    def run(self, *args: str | Path, check: bool = True, env: dict[str, str] | None = None
            ) -> Result:
        proc = subprocess.run([LAMINA, *map(str, args)], cwd=self.cwd, capture_output=True,
                              text=True, env={**self.env, **(env or {})}, timeout=300)
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"lamina {' '.join(map(str, args))} failed "
                                 f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return res

    def fail(self, *args: str | Path) -> Result:
        res = self.run(*args, check=False)
        assert res.code != 0, f"lamina {' '.join(map(str, args))} should fail:\n{res.out}"
        assert "Traceback" not in res.err, res.err
        return res

    def blob_files(self) -> set[str]:
        d = self.root / "blobs" / "sha256"
        return {p.name for p in d.iterdir()} if d.exists() else set()

    def assert_consistent(self) -> None:
        res = self.run("fsck", "--json")
        report = res.json()
        assert report["clean"], report
        ingest = self.root / "ingest"
        assert not ingest.exists() or not any(ingest.iterdir()), list(ingest.iterdir())


def seed_sources(seed: Path, site: str) -> list[Path]:
    return [seed / "os", seed / "webserver", seed / "config", seed / f"site-{site}"]


def import_seed_images(lam: Lamina, seed: Path) -> Lamina:
    """Import the seed's demo/a and demo/b (three shared layers, one of their own each)
    into ``lam``'s store."""
    lam.run("import", "demo/a", *seed_sources(seed, "a"))
    lam.run("import", "demo/b", *seed_sources(seed, "b"))
    return lam


def tree_listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: type, mode, owner, size, content digest or link target."""
    import hashlib
    import stat

    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra: Any = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            else:
                extra = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, extra)
    return out


def wait_for_registry(proc: subprocess.Popen[bytes], url: str, seconds: float = 20) -> bool:
    """Poll ``url``/v2/ until the registry answers (200, or 401 when it wants auth);
    False if ``proc`` died or time ran out."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            r = httpx.get(f"{url}/v2/", verify=False, timeout=2)
            if r.status_code in (200, 401):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: ``1m``) at ``where``/small, unmounted after;
    root only (mounting needs it), else the test is skipped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = where / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def tar_bytes(members: Iterable[tuple[str, bytes | None]],
              symlinks: Iterable[tuple[str, str]] = (), mtime: int = 1600000000) -> bytes:
    """A tar (PAX, Python's tarfile: an independent writer) of ``members`` in the order
    given — (name, bytes) files, (name, None) directories — then ``symlinks`` (name,
    target); all with ``mtime``."""
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, target in symlinks:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, mtime
            tar.addfile(info)
    return raw.getvalue()


@dataclass(frozen=True)
class ChunkedImage:
    """An image in a store whose one layer is kept as chunks (store/chunks.py)."""

    tag: str
    manifest: str
    layer: str
    layer_bytes: bytes
    spans: list[tuple[int, int]]


def store_chunked_image(root: Path, tag: str, files: Iterable[tuple[str, bytes | None]],
                        span: int = 3000) -> ChunkedImage:
    """Record a one-layer image (a gzip'd tar of ``files``: pushed as it is) under ``tag``
    in the store at ``root``, its layer kept as chunks cut every ``span`` bytes."""
    import gzip

    from lamina.digest import Digest
    from lamina.image import mediatypes as mt
    from lamina.image.config import History, build_config
    from lamina.image.manifest import Descriptor, Platform, build_manifest
    from lamina.store import Store

    tar = tar_bytes(files)
    layer = gzip.compress(tar, mtime=0)
    diff_id = Digest.from_bytes(tar)
    spans = [(o, min(span, len(layer) - o)) for o in range(0, len(layer), span)]
    with Store(root) as store:
        d = store.blobs.put_bytes(layer)
        store.meta.add_layer(str(d), str(diff_id), mt.OCI_LAYER_GZIP, len(layer))
        config = build_config([diff_id], [History(created_by="chunked")],
                              Platform("amd64", "linux"), created="2023-11-14T22:13:20Z")
        store.blobs.put_bytes(config.raw)
        manifest = build_manifest(Descriptor(mt.OCI_CONFIG, config.digest, len(config.raw)),
                                  [Descriptor(mt.OCI_LAYER_GZIP, d, len(layer))])
        store.blobs.put_bytes(manifest.raw)
        store.meta.add_image(str(manifest.digest), manifest.media_type, len(manifest.raw),
                             [str(x.digest) for x in manifest.blobs()], tag=tag)
        store.blobs.put_chunked(d, store.blobs.path(d), spans)
        assert not store.blobs.path(d).exists()
    return ChunkedImage(tag, str(manifest.digest), str(d), layer, spans)
