"""Helpers for the layer tests: snapshot trees, write/apply layers in memory, craft raw tars."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

from lamina.digest import HashingWriter
from lamina.layer import (
    AppliedLayer,
    ApplyOptions,
    Changeset,
    LayerOptions,
    TarInfo,
    apply_layer,
    write_changeset,
)

IS_ROOT = os.geteuid() == 0


def xattrs_of(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def snapshot(root: Path, owners: bool = IS_ROOT) -> dict[str, tuple[object, ...]]:
    """Everything a layer must carry, per relative path (the root itself excluded)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            owner = (st.st_uid, st.st_gid) if owners else ()
            mtime = st.st_mtime_ns // 1_000_000_000
            fmt = stat.S_IFMT(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full), owner, mtime)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    data = f.read()
                out[rel] = ("f", stat.S_IMODE(st.st_mode), owner, mtime, data, xattrs_of(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), owner, mtime, xattrs_of(full))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out[rel] = ("dev", fmt, stat.S_IMODE(st.st_mode), owner, mtime, st.st_rdev)
            else:
                out[rel] = ("other", fmt, stat.S_IMODE(st.st_mode), owner, mtime)
    return out


def layer_bytes(cs: Changeset, options: LayerOptions | None = None) -> tuple[bytes, TarInfo]:
    buf = io.BytesIO()
    info = write_changeset(cs, buf, options or LayerOptions())
    return buf.getvalue(), info


def apply_bytes(
    data: bytes, target: Path, options: ApplyOptions | None = None, **kw: object
) -> AppliedLayer:
    return apply_layer(io.BytesIO(data), target, options=options or ApplyOptions(), **kw)  # type: ignore[arg-type]


def digest_of(data: bytes) -> str:
    hw = HashingWriter()
    hw.write(data)
    return str(hw.digest)


# --------------------------------------------------------------------- raw tars


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    linkname: str = "",
    mode: int = 0o644,
    mtime: int = 1_600_000_000,
    pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.linkname = linkname
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if pax:
        info.pax_headers = pax
    return info, data


def make_tar(
    members: Iterable[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    """A tar with exactly these members: tarfile writes names as given (even '../x')."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def tree_listing(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )
