"""Filesystem work of COPY and ADD inside a root filesystem, done as a chroot would.

Every container path is resolved inside the root one component at a time: a symlink in
the image is followed *within* the root (absolute targets start at the root, ``..``
stops at it), so nothing a Containerfile copies can land outside the rootfs, whatever
links the base image holds.
"""

from __future__ import annotations

import bz2
import lzma
import os
import posixpath
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lamina.build.ignore import IgnoreMatcher
from lamina.errors import InvalidInput, NotFound
from lamina.layer import ApplyOptions, apply_layer
from lamina.run.sandbox import resolve_in_root as sandbox_resolve


def resolve_in_root(root: Path, path: str, create_dirs: bool = False,
                    follow_last: bool = True, owner: Owner | None = None,
                    mode: int | None = None) -> Path:
    """The host path of container ``path`` under ``root``, symlinks followed inside the
    root only (run.sandbox.resolve_in_root: the process's view).  ``create_dirs`` makes
    the missing parent directories (0755 whatever the umask, owned by ``owner``, else
    root: see ``_made_dir``)."""
    real = sandbox_resolve(root, path, follow_last)
    host = Path(os.fspath(root) + real) if real != "/" else Path(root)
    if create_dirs:
        parts = [p for p in real.split("/") if p][:-1]
        current = Path(root)
        for part in parts:
            current = current / part
            try:
                os.mkdir(current, 0o755)
                _made_dir(current, owner, mode)
            except FileExistsError:
                if not current.is_dir():
                    raise InvalidInput(f"{path}: {current.relative_to(root)} is not a "
                                       "directory in the image") from None
            except NotADirectoryError:
                raise InvalidInput(f"{path}: a parent is not a directory in the image"
                                   ) from None
    return host


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def _made_dir(path: Path, owner: Owner | None, mode: int | None = None) -> None:
    """A directory COPY/ADD had to create for its destination (missing parents, or the
    destination itself): 0755 (the ``--chmod`` mode if given), owned by the ``--chown``
    user when there is one, as BuildKit makes it (tonistiigi/fsutil copy/mkdir.go
    ``MkdirAll`` chowns each directory it creates; copy.go ``Copy``/``prepareTargetDir``
    call it for the destination's parents and for a directory's destination, with
    ``CopyInfo.Mode`` as the permission when set)."""
    os.chmod(path, 0o755 if mode is None else mode)
    if owner is not None and os.geteuid() == 0:
        os.lchown(path, owner.uid, owner.gid)


def _ensure_dir(path: Path, owner: Owner | None, mode: int | None = None) -> None:
    """``path`` (its parent exists) as a directory, made as ``_made_dir`` says if missing."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not path.is_dir():
            raise InvalidInput(f"cannot copy into {path.name}: it is not a directory in the "
                               "image") from None
        return
    _made_dir(path, owner, mode)


def _read_db(root: Path, name: str) -> list[list[str]]:
    path = resolve_in_root(root, f"/etc/{name}")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip()
                    and not line.startswith("#")]
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []


def lookup_owner(root: Path, spec: str) -> Owner:
    """``user[:group]`` by name or number, names looked up in the rootfs's /etc/passwd and
    /etc/group (as ``COPY --chown`` and ``USER`` do).  A user without group gets its
    primary group (or the same number, for a bare uid)."""
    user, _, group = spec.partition(":")
    passwd = _read_db(root, "passwd")
    uid: int | None = None
    primary: int | None = None
    if user.isdigit():
        uid = int(user)
        for row in passwd:
            if len(row) > 3 and row[2] == user and row[3].isdigit():
                primary = int(row[3])
    else:
        for row in passwd:
            if len(row) > 3 and row[0] == user:
                uid, primary = int(row[2]), int(row[3])
                break
        if uid is None:
            raise NotFound(f"unable to find user {user}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [int(r[2]) for r in _read_db(root, "group") if len(r) > 2 and r[0] == group]
            if not found:
                raise NotFound(f"unable to find group {group}: no matching entries in group file")
            gid = found[0]
    else:
        gid = primary if primary is not None else (uid if user.isdigit() else 0)
    return Owner(uid, gid)


@dataclass(frozen=True)
class CopyAttrs:
    owner: Owner | None = None      # None: 0:0, as Docker creates copied files
    mode: int | None = None         # --chmod


def _set_attrs(path: str, st: os.stat_result, attrs: CopyAttrs, is_link: bool) -> None:
    owner = attrs.owner or Owner(0, 0)
    if os.geteuid() == 0:
        os.lchown(path, owner.uid, owner.gid)
    if not is_link:
        os.chmod(path, attrs.mode if attrs.mode is not None else stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _clear(path: str, for_dir: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if for_dir:
            return
        shutil.rmtree(path)
    else:
        os.unlink(path)


Skip = Callable[[str], bool]


def _never(_path: str) -> bool:
    return False


def _copy_entry(src: str, dst: str, attrs: CopyAttrs, skip: Skip = _never) -> None:
    if skip(src):
        return
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        _clear(dst, for_dir=True)
        if not os.path.isdir(dst):
            os.mkdir(dst, 0o755)
        with os.scandir(src) as it:
            for entry in sorted(it, key=lambda e: e.name):
                _copy_entry(entry.path, os.path.join(dst, entry.name), attrs, skip)
        _set_attrs(dst, st, attrs, False)
    elif stat.S_ISLNK(st.st_mode):
        _clear(dst, for_dir=False)
        os.symlink(os.readlink(src), dst)
        _set_attrs(dst, st, attrs, True)
    elif stat.S_ISREG(st.st_mode):
        _clear(dst, for_dir=False)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        _set_attrs(dst, st, attrs, False)
    # sockets, fifos and devices in a build context are skipped, as Docker does


def excluding(skip: Skip, exclude: IgnoreMatcher | None, top: Path) -> Skip:
    """``skip``, and also what ``COPY --exclude`` patterns match, relative to the source
    ``top`` (fsutil copy.go matches them against the path below the source; the source
    itself is never excluded).  An excluded directory that a ``!`` pattern may reach into
    is walked, as fsutil does."""
    if exclude is None:
        return skip
    base = os.fspath(top)

    def check(host: str) -> bool:
        if skip(host):
            return True
        rel = os.path.relpath(host, base)
        if rel == "." or rel.startswith("../") or not exclude.matches(rel):
            return False
        return not (os.path.isdir(host) and not os.path.islink(host)
                    and exclude.may_match_inside(rel))

    return check


def copy_into(root: Path, sources: list[Path], dest: str, attrs: CopyAttrs,
              skip: Skip = _never, exclude: IgnoreMatcher | None = None) -> None:
    """Docker's COPY placement rules (Dockerfile reference, "COPY"):
    a directory source copies its *contents*; with several sources, or a destination
    ending in ``/``, or an existing directory, files land inside ``dest``; otherwise a
    single file source becomes ``dest``."""
    dest_is_dir = dest.endswith("/") or len(sources) > 1
    target = resolve_in_root(root, dest, create_dirs=True, owner=attrs.owner,
                             mode=attrs.mode)
    if not dest_is_dir and target.is_dir() and not sources[0].is_dir():
        dest_is_dir = True
    if len(sources) > 1 and not dest.endswith("/"):
        raise InvalidInput(f"when using COPY with more than one source file, the destination "
                           f"must be a directory and end with a /: {dest}")
    for src in sources:
        skip_src = excluding(skip, exclude, src)
        if src.is_dir() and not src.is_symlink():
            _ensure_dir(target, attrs.owner, attrs.mode)
            with os.scandir(src) as it:
                for entry in sorted(it, key=lambda e: e.name):
                    _copy_entry(entry.path, str(target / entry.name), attrs, skip_src)
            continue
        if dest_is_dir:
            _ensure_dir(target, attrs.owner, attrs.mode)
            _copy_entry(str(src), str(target / src.name), attrs, skip_src)
        else:
            _copy_entry(str(src), str(target), attrs, skip_src)


def copy_parents(root: Path, base: Path, rels: list[str], dest: str, attrs: CopyAttrs,
                 skip: Skip = _never, exclude: IgnoreMatcher | None = None) -> None:
    """``COPY --parents``: each ``rels`` path (relative to ``base``, the source root or
    the part before a ``/./`` pivot) lands at ``dest/<rel>``; the directories on the way
    are copied from the source's (mode, owner per --chown, mtime) where the image lacks
    them (fsutil copy.go ``createParentDirs``), existing ones are kept."""
    target = resolve_in_root(root, dest.rstrip("/") + "/", create_dirs=True,
                             owner=attrs.owner, mode=attrs.mode)
    _ensure_dir(target, attrs.owner, attrs.mode)
    check = excluding(skip, exclude, base)
    for rel in rels:
        parts = [p for p in rel.split("/") if p]
        src_dir, dst_dir = base, target
        for part in parts[:-1]:
            src_dir, dst_dir = src_dir / part, dst_dir / part
            if os.path.isdir(dst_dir) and not os.path.islink(dst_dir):
                continue
            _clear(str(dst_dir), for_dir=False)
            os.mkdir(dst_dir, 0o755)
            _set_attrs(str(dst_dir), os.stat(src_dir), attrs, False)
        src = base / rel if parts else base
        if not parts:  # the whole base: its contents
            with os.scandir(src) as it:
                for entry in sorted(it, key=lambda e: e.name):
                    _copy_entry(entry.path, str(target / entry.name), attrs, check)
        elif not check(str(src)):
            _copy_entry(str(src), str(dst_dir / parts[-1]), attrs, check)


def _archive_stream(path: Path) -> BinaryIO | None:
    """A decompressed stream if ``path`` is a tar archive (plain, gzip, bzip2, xz, zstd),
    else None: ADD unpacks local archives and copies other files as they are."""
    with open(path, "rb") as f:
        head = f.read(512)
    raw: BinaryIO
    if head[:3] == b"BZh":
        raw = bz2.open(path, "rb")  # type: ignore[assignment]
    elif head[:6] == b"\xfd7zXZ\x00":
        raw = lzma.open(path, "rb")  # type: ignore[assignment]
    elif head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd":
        return open(path, "rb")  # apply_layer detects gzip and zstd itself
    elif len(head) == 512 and head[257:262] == b"ustar":
        return open(path, "rb")
    else:
        return None
    inner = raw.peek(512)[:512] if hasattr(raw, "peek") else b""
    if len(inner) >= 262 and inner[257:262] != b"ustar":
        raw.close()
        return None
    return raw


def add_into(root: Path, sources: list[Path], dest: str, attrs: CopyAttrs,
             skip: Skip = _never, exclude: IgnoreMatcher | None = None) -> None:
    """ADD: like COPY, but a local tar archive is unpacked into ``dest`` (a directory)."""
    plain: list[Path] = []
    for src in sources:
        stream = _archive_stream(src) if src.is_file() else None
        if stream is None:
            plain.append(src)
            continue
        with stream:
            target = resolve_in_root(root, dest if dest.endswith("/") else dest + "/",
                                     create_dirs=True, owner=attrs.owner, mode=attrs.mode)
            _ensure_dir(target, attrs.owner, attrs.mode)
            # An archive's own owners are kept (as Docker does) unless --chown; its
            # ".wh." names are plain files here, not whiteouts.
            apply_layer(stream, target, options=ApplyOptions(whiteouts=False))
            if attrs.owner is not None or attrs.mode is not None:
                _reown(target, attrs)
    if plain:
        copy_into(root, plain, dest, attrs, skip, exclude)


def _reown(top: Path, attrs: CopyAttrs) -> None:
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            _set_attrs(p, st, attrs, stat.S_ISLNK(st.st_mode))


def container_path(workdir: str, path: str) -> str:
    """A path from an instruction, relative to WORKDIR unless absolute; keeps a trailing
    slash (it means "a directory" to COPY)."""
    joined = path if path.startswith("/") else posixpath.join(workdir or "/", path)
    norm = posixpath.normpath(joined)
    if norm.startswith("//"):
        norm = norm[1:]
    return norm + "/" if path.endswith("/") and norm != "/" else norm
