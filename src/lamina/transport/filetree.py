"""Archives and folders as trees of named files, read and written the same way.

An OCI layout and a ``docker save`` archive are each either a directory or a tar of one;
the readers and writers of those formats see only this small interface, so each format
is written once.  Reading a tar seeks to members (no extraction); a compressed tar is
first decompressed into a temporary file so it can be seeked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from lamina.digest import CHUNK, read_full
from lamina.errors import InvalidInput, NotFound, StoreError, UnsafeArchive
from lamina.store import scratch
from lamina.store.files import fsync_dir
from lamina.store.locks import flock_or_close, take_if_abandoned


def clean_name(name: str) -> str:
    """Normalise a member name (``./index.json`` → ``index.json``); refuse escapes."""
    p = PurePosixPath(name.lstrip("/"))
    parts = [x for x in p.parts if x not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"archive member {name!r} climbs out of the archive")
    return "/".join(parts)


class FileTree(Protocol):
    """Read side: named files."""

    where: str

    def names(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def open(self, name: str) -> BinaryIO: ...
    def close(self) -> None: ...


class DirTree:
    """A directory.  Symlinks are followed while they stay inside it (a layout checked
    out by git, or made by tools that link shared blobs, has them), as ``TarTree``
    follows links between members; one leading out is refused by name, so a layout
    cannot make lamina read any file of the machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        self._real = os.path.realpath(root)

    def _path(self, name: str) -> Path:
        path = self.root / clean_name(name)
        real = os.path.realpath(path)
        if real != self._real and not real.startswith(self._real.rstrip("/") + "/"):
            how = "is a symlink" if path.is_symlink() else "is under a symlinked directory"
            raise UnsafeArchive(f"{self.where}: {name} {how} leading outside the directory")
        if path.is_symlink() and not os.path.exists(real):
            raise InvalidInput(f"{self.where}: {name} is a symlink to nothing")
        return path

    def names(self) -> list[str]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for f in files:
                out.append(f if rel == "." else f"{rel}/{f}")
        return sorted(out)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"{self.where}: no {name}") from None

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.where}: no {name}") from None

    def close(self) -> None:
        pass


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


class TarTree:
    """A tar archive read in place.  gzip/zstd archives are decompressed to a temp file."""

    def __init__(self, path: Path, tmpdir: Path | None = None) -> None:
        self.where = str(path)
        self._tmp: Path | None = None
        self._owned: scratch.Scratch | None = None
        try:
            magic = _magic(path)
        except FileNotFoundError:
            raise NotFound(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InvalidInput(f"{path} is a directory, not an archive") from None
        source = path
        if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
            source = self._decompress(path, magic, tmpdir)
        try:
            self._file = open(source, "rb")
            self._tar = tarfile.open(fileobj=self._file, mode="r:")
            self._members: dict[str, tarfile.TarInfo] = {}
            links: dict[str, str] = {}
            # links to nothing in the archive: named when asked for (not "no such file")
            self._broken: dict[str, str] = {}
            for m in self._tar:
                if m.isfile():
                    self._members[clean_name(m.name)] = m
                elif m.issym() or m.islnk():
                    links[clean_name(m.name)] = self._link_target(m)
            # docker save (1.10–24) stores a layer shared by two images once and makes the
            # other <id>/layer.tar a symlink to it: follow links, only inside the archive.
            for name, target in links.items():
                for _hop in range(8):
                    if target in self._members or target not in links:
                        break
                    target = links[target]
                if target in self._members:
                    self._members[name] = self._members[target]
                elif name not in self._members:
                    self._broken[name] = ("leading outside the archive" if not target
                                          else "to nothing in the archive")
        except tarfile.TarError as e:
            self.close()
            raise InvalidInput(f"{path} is not a readable tar archive: {e}") from None

    @staticmethod
    def _link_target(m: tarfile.TarInfo) -> str:
        if m.islnk():
            return clean_name(m.linkname)
        base = PurePosixPath(clean_name(m.name)).parent
        try:
            return clean_name(posixpath.normpath(str(base / m.linkname)))
        except UnsafeArchive:
            return ""  # a link out of the archive points at nothing

    def _decompress(self, path: Path, magic: bytes, tmpdir: Path | None) -> Path:
        if tmpdir is not None:
            # The store's tmp: owned by this process, so a killed load's copy is gc's.
            self._owned = scratch.make_file(tmpdir, "lamina-archive-")
            self._tmp = self._owned.path
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CLOEXEC)
        else:
            fd, name = tempfile.mkstemp(prefix="lamina-archive-")
            self._tmp = Path(name)
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                if magic[:2] == b"\x1f\x8b":
                    from isal import igzip

                    with igzip.IGzipFile(fileobj=src, mode="rb") as z:  # type: ignore[no-untyped-call]
                        shutil.copyfileobj(z, dst, CHUNK)
                else:
                    import zstandard

                    zstandard.ZstdDecompressor().copy_stream(src, dst)
        except (OSError, EOFError, ValueError) as e:
            self._drop_tmp()
            raise InvalidInput(f"{path}: cannot decompress archive: {e}") from None
        return self._tmp

    def names(self) -> list[str]:
        return sorted(self._members)

    def _member(self, name: str) -> tarfile.TarInfo | None:
        clean = clean_name(name)
        m = self._members.get(clean)
        if m is None and clean in self._broken:
            raise UnsafeArchive(f"{self.where}: {name} is a symlink {self._broken[clean]}")
        return m

    def exists(self, name: str) -> bool:
        return self._member(name) is not None

    def size(self, name: str) -> int:
        m = self._member(name)
        if m is None:
            raise NotFound(f"{self.where}: no {name}")
        return m.size

    def open(self, name: str) -> BinaryIO:
        m = self._member(name)
        if m is None:
            raise NotFound(f"{self.where}: no {name}")
        f = self._tar.extractfile(m)
        assert f is not None
        return f  # type: ignore[return-value]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._file.close()
        self._drop_tmp()

    def _drop_tmp(self) -> None:
        if self._owned is not None:
            self._owned.remove()
        elif self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def open_tree(path: Path, tmpdir: Path | None = None) -> FileTree:
    if path.is_dir():
        return DirTree(path)
    return TarTree(path, tmpdir)


class TreeWriter(Protocol):
    """Write side: add named files, then ``finish`` (or ``abort`` to leave nothing)."""

    where: str

    def has(self, name: str) -> bool: ...
    def add(self, name: str, size: int, stream: BinaryIO) -> None: ...
    def add_bytes(self, name: str, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


TEMP_MARK = ".tmp-"   # in the name of a file being written beside its place


def locked_temp(dest: Path, mark: str = TEMP_MARK) -> tuple[Path, int]:
    """A fresh file beside ``dest`` (``.<name><mark><random>``), open for writing and
    locked while its writer lives, so ``sweep_temps`` can tell a live writer's file from
    a killed one's.  A sweep that took the lock between the create and the flock (a
    second process writing there) makes this try another name."""
    for _ in range(100):
        path = dest.with_name(f".{dest.name}{mark}{os.urandom(6).hex()}")
        held = flock_or_close(
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644),
            fcntl.LOCK_EX | fcntl.LOCK_NB)
        if held is not None:
            return path, held
    raise StoreError(f"cannot make a temporary name beside {dest}")


def sweep_temps(directory: Path, marks: tuple[str, ...] = (TEMP_MARK,)) -> None:
    """Remove the ``locked_temp`` files of killed writers from ``directory`` (those no
    one holds locked); a live writer's stay."""
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(".") or not any(m in entry.name for m in marks):
                continue
            with contextlib.suppress(OSError):
                fd = take_if_abandoned(entry.path)
                if fd is not None:
                    try:
                        os.unlink(entry.path)
                    finally:
                        os.close(fd)


class DirWriter:
    """Writes into a directory; each file lands via a locked temp file + rename (what a
    killed writer left is swept by the next writer of that directory).  ``abort``
    removes the files this writer added (and the directory if it created it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        self._created = not root.exists()
        self._added: list[Path] = []
        self._swept: set[Path] = set()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {root}: {e.strerror or e}") from None

    def has(self, name: str) -> bool:
        return (self.root / clean_name(name)).is_file()

    def add(self, name: str, size: int, stream: BinaryIO) -> None:
        dest = self.root / clean_name(name)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.parent not in self._swept:
                self._swept.add(dest.parent)
                sweep_temps(dest.parent)
            tmp, fd = locked_temp(dest)
        except OSError as e:
            raise StoreError(f"cannot write {dest}: {e.strerror or e}") from None
        try:
            with open(fd, "wb") as f:
                shutil.copyfileobj(stream, f, CHUNK)
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {dest}: {e.strerror or e}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._added.append(dest)

    def add_bytes(self, name: str, data: bytes) -> None:
        import io

        self.add(name, len(data), io.BytesIO(data))

    def adopt(self, tmp: Path, name: str) -> None:
        """A file written and checked beside its place by another writer (a delta
        copy's blob, transport/layout_delta.py): renamed to ``name`` durably, and
        removed by ``abort`` like the files this writer added."""
        dest = self.root / clean_name(name)
        try:
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as e:
            raise StoreError(f"cannot write {dest}: {e.strerror or e}") from None
        self._added.append(dest)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        if self._created:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for p in self._added:
            p.unlink(missing_ok=True)


class _FullReads:
    """tarfile.addfile treats a short read as the end of data; pipes and sockets return
    short reads all the time.  Fill each read (up to EOF) before handing it over."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self._raw.read()
        return read_full(self._raw, n)


class TarWriter:
    """Writes a tar to ``path`` via ``path.tmp``; renamed into place by ``finish``."""

    def __init__(self, path: Path, mtime: int = 0) -> None:
        self.path = path
        self.where = str(path)
        self._tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        self._mtime = mtime
        self._names: set[str] = set()
        try:
            self._file = open(self._tmp, "wb")
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
        self._tar = tarfile.open(fileobj=self._file, mode="w:", format=tarfile.PAX_FORMAT)
        self._dirs: set[str] = set()

    def has(self, name: str) -> bool:
        return clean_name(name) in self._names

    def _add_dirs(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = self._mtime
                self._tar.addfile(info)

    def add(self, name: str, size: int, stream: BinaryIO) -> None:
        name = clean_name(name)
        if name in self._names:
            return
        self._add_dirs(name)
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        info.mtime = self._mtime
        try:
            self._tar.addfile(info, _FullReads(stream))
        except OSError as e:
            raise StoreError(f"cannot write {self.path}: {e.strerror or e}") from None
        self._names.add(name)

    def add_bytes(self, name: str, data: bytes) -> None:
        import io

        self.add(name, len(data), io.BytesIO(data))

    def finish(self) -> None:
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise StoreError(f"cannot write {self.path}: {e.strerror or e}") from None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._file.close()
        self._tmp.unlink(missing_ok=True)
