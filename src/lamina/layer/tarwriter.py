"""Writing a changeset as a deterministic layer tar (image-spec layer.md).

The bytes depend only on the changeset's content and metadata, never on the machine
or the moment: entries in ``paths.sort_key`` order, POSIX ustar headers with a PAX
header only when something does not fit (long names and link targets, ids or sizes too
big for octal, xattrs, times before 1970), numeric owners with empty user/group
names, whole-second mtimes clamped to ``source_date_epoch``, no atime/ctime, and no
padding to a tar record (the archive ends after its two zero blocks, as Go's
``archive/tar`` and so Docker and containerd end it).

The tar is assembled in 1 MiB blocks: file contents are read straight into the block
(``os.readv``), each full block is hashed (diff_id) and handed to the compressor,
which works on other threads while the next block is filled.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lamina.digest import Digest
from lamina.errors import InvalidInput
from lamina.layer import tarformat as tf
from lamina.layer.changes import Change, ChangeKind, Changeset, walk_tree
from lamina.layer.chunkedwriter import ChunkedBlocks, file_shrank
from lamina.layer.compress import BLOCK_SIZE, BlockCompressor, Writable, compressor
from lamina.layer.options import Compression, LayerOptions

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class TarInfo:
    """What writing a layer tells the caller (the compressed digest is the caller's:
    ``out`` is expected to hash what it is given)."""

    diff_id: Digest
    uncompressed_size: int
    compression: Compression
    entries: int
    # The layer descriptor's annotations (zstd:chunked: where its TOC is).
    annotations: Mapping[str, str] = field(default_factory=dict)
    # zstd:chunked: the blob's (offset, length) frame spans, for a chunk store
    # (``BlobWriter.publish(spans)``); empty for a single-stream layer.
    spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry written as given (``write_entries``: a tar made from other tars, e.g.
    layer/squash.py): ``name`` relative to the root, no leading or trailing '/';
    ``type`` a tarformat flag; a regular file's ``size`` bytes are read from ``fd`` at
    ``offset``.  The mtime is clamped to ``source_date_epoch`` like any other."""

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    fd: int = -1
    offset: int = 0


class _Sink(Protocol):
    """Where the tar writer puts its bytes: ``_Blocks`` (one compressed stream) or
    ``chunkedwriter.ChunkedBlocks`` (a frame per file payload)."""

    size: int
    annotations: Mapping[str, str]
    spans: list[tuple[int, int]]

    def write(self, data: bytes) -> None: ...
    def skip(self, n: int) -> None: ...
    def read_from(self, fd: int, size: int, path: str) -> None: ...
    def entry(self, name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
              typeflag: bytes, linkname: bytes, devmajor: int, devminor: int,
              xattrs: list[tuple[str, bytes]] | None) -> None: ...
    def finish(self) -> Digest: ...
    def abort(self) -> None: ...


class _Blocks:
    """Fixed-size blocks of the tar stream; full blocks are hashed and passed on.

    Fresh blocks are zero-filled, so tar padding is written by skipping over it.
    """

    def __init__(self, sink: BlockCompressor) -> None:
        self._sink = sink
        self._hasher = hashlib.sha256()
        self._buf = bytearray(BLOCK_SIZE)
        self._view = memoryview(self._buf)
        self._pos = 0
        self.size = 0
        self.annotations: Mapping[str, str] = {}
        self.spans: list[tuple[int, int]] = []

    def _emit(self) -> None:
        block = self._buf if self._pos == BLOCK_SIZE else self._buf[: self._pos]
        self._hasher.update(block)
        self._sink.put(block)
        self.size += len(block)
        self._buf = bytearray(BLOCK_SIZE)
        self._view = memoryview(self._buf)
        self._pos = 0

    def write(self, data: bytes) -> None:
        n = len(data)
        pos = self._pos
        if pos + n < BLOCK_SIZE:
            self._buf[pos : pos + n] = data
            self._pos = pos + n
            return
        view = memoryview(data)
        while n:
            k = min(n, BLOCK_SIZE - self._pos)
            self._buf[self._pos : self._pos + k] = view[:k]
            self._pos += k
            view = view[k:]
            n -= k
            if self._pos == BLOCK_SIZE:
                self._emit()

    def skip(self, n: int) -> None:
        """Advance over ``n`` zero bytes (padding)."""
        while n:
            k = min(n, BLOCK_SIZE - self._pos)
            self._pos += k
            n -= k
            if self._pos == BLOCK_SIZE:
                self._emit()

    def read_from(self, fd: int, size: int, path: str) -> None:
        """Copy exactly ``size`` bytes from ``fd`` into the stream."""
        left = size
        while left:
            k = min(left, BLOCK_SIZE - self._pos)
            got = os.readv(fd, [self._view[self._pos : self._pos + k]])
            if got == 0:
                raise file_shrank(path, size - left, size)
            self._pos += got
            left -= got
            if self._pos == BLOCK_SIZE:
                self._emit()

    def entry(self, name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
              typeflag: bytes, linkname: bytes, devmajor: int, devminor: int,
              xattrs: list[tuple[str, bytes]] | None) -> None:
        pass  # a plain stream needs no index of its entries

    def finish(self) -> Digest:
        if self._pos:
            self._emit()
        self._sink.finish()
        return Digest.from_hasher(self._hasher)

    def abort(self) -> None:
        self._sink.close()


def _xattr_records(path: str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    if not names:
        return []
    records = []
    for name in sorted(names):
        try:
            records.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return records


class _TarWriter:
    def __init__(self, blocks: _Sink, source_date_epoch: int | None) -> None:
        self._blocks = blocks
        self._sde = source_date_epoch
        self._inodes: dict[tuple[int, int], bytes] = {}
        self.entries = 0

    def _mtime(self, st: os.stat_result) -> int:
        mtime = st.st_mtime_ns // 1_000_000_000
        if self._sde is not None and mtime > self._sde:
            mtime = self._sde
        return mtime

    def header(
        self,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime: int,
        typeflag: bytes,
        linkname: bytes = b"",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: list[tuple[str, bytes]] | None = None,
    ) -> None:
        pax: list[bytes] = []
        split = tf.split_ustar_name(name)
        if split is None:
            pax.append(tf.pax_record("path", name))
            prefix, short = b"", name[:100]
        else:
            prefix, short = split
        if len(linkname) > 100:
            pax.append(tf.pax_record("linkpath", linkname))
            linkname = linkname[:100]
        if uid > tf.MAX_ID:
            pax.append(tf.pax_record("uid", b"%d" % uid))
            uid = 0
        if gid > tf.MAX_ID:
            pax.append(tf.pax_record("gid", b"%d" % gid))
            gid = 0
        if size > tf.MAX_SIZE:
            pax.append(tf.pax_record("size", b"%d" % size))
        if not 0 <= mtime <= tf.MAX_SIZE:
            pax.append(tf.pax_record("mtime", b"%d" % mtime))
            mtime = 0
        if devmajor > tf.MAX_DEV or devminor > tf.MAX_DEV:
            raise InvalidInput(f"{name!r}: device number too large for a tar header")
        if xattrs:
            for key, value in xattrs:
                pax.append(tf.pax_record(tf.XATTR_PREFIX + key, value))
        if pax:
            # The records follow the sorted order above: they are part of the digest.
            data = b"".join(pax)
            self._blocks.write(tf.ustar_header(b"././@PaxHeader", 0o644, 0, 0, len(data), 0, b"x"))
            self._blocks.write(data)
            self._blocks.skip(tf.pad_len(len(data)))
        self._blocks.write(
            tf.ustar_header(
                short,
                mode,
                uid,
                gid,
                0 if size > tf.MAX_SIZE else size,
                mtime,
                typeflag,
                linkname,
                devmajor,
                devminor,
                prefix,
            )
        )
        self._blocks.entry(name, mode, uid, gid, size, mtime, typeflag, linkname, devmajor,
                           devminor, xattrs)
        self.entries += 1

    def add(self, root: str, change: Change) -> None:
        path = change.path
        if change.kind is ChangeKind.DELETED or change.kind is ChangeKind.OPAQUE:
            # Whiteout files carry no metadata worth keeping (image-spec: only the name
            # matters); fixed values keep the bytes reproducible.
            self.header(os.fsencode(change.tar_name), 0o644, 0, 0, 0, 0, b"0")
            return
        st = change.stat
        full = root + "/" + path
        if st is None:
            st = os.lstat(full)
        mode = st.st_mode
        perm = stat.S_IMODE(mode)
        name = os.fsencode(path)
        mtime = self._mtime(st)
        xattrs = _xattr_records(full)
        if stat.S_ISREG(mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self._inodes.get(key)
                if first is not None:
                    # Same inode as an earlier entry: a hard link to it (the first
                    # path in tar order carries the data).
                    self.header(name, perm, st.st_uid, st.st_gid, 0, mtime, b"1", first)
                    return
                self._inodes[key] = name
            size = st.st_size
            fd = os.open(full, _O_READ)
            try:
                self.header(name, perm, st.st_uid, st.st_gid, size, mtime, b"0", xattrs=xattrs)
                self._blocks.read_from(fd, size, full)
            finally:
                os.close(fd)
            self._blocks.skip(tf.pad_len(size))
        elif stat.S_ISDIR(mode):
            self.header(name + b"/", perm, st.st_uid, st.st_gid, 0, mtime, b"5", xattrs=xattrs)
        elif stat.S_ISLNK(mode):
            target = os.fsencode(os.readlink(full))
            self.header(name, perm, st.st_uid, st.st_gid, 0, mtime, b"2", target, xattrs=xattrs)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            flag = b"3" if stat.S_ISCHR(mode) else b"4"
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.header(name, perm, st.st_uid, st.st_gid, 0, mtime, flag, b"", major, minor, xattrs)
        elif stat.S_ISFIFO(mode):
            self.header(name, perm, st.st_uid, st.st_gid, 0, mtime, b"6", xattrs=xattrs)
        # Sockets and anything else have no tar representation; diff_trees skips them.

    def put(self, e: Entry) -> None:
        name = os.fsencode(e.name) + (b"/" if e.type == tf.DIR else b"")
        mtime = e.mtime if self._sde is None else min(e.mtime, self._sde)
        is_reg = e.type == tf.REG
        self.header(name, e.mode, e.uid, e.gid, e.size if is_reg else 0, mtime,
                    e.type.encode(), os.fsencode(e.linkname), e.devmajor, e.devminor,
                    list(e.xattrs) or None)
        if is_reg and e.size:
            os.lseek(e.fd, e.offset, os.SEEK_SET)
            self._blocks.read_from(e.fd, e.size, e.name)
            self._blocks.skip(tf.pad_len(e.size))

    def close(self) -> None:
        # End of archive: two zero blocks (ustar), nothing more.
        self._blocks.skip(2 * tf.BLOCK)


def write_changeset(cs: Changeset, out: Writable, options: LayerOptions) -> TarInfo:
    """Write ``cs`` as a compressed layer to ``out``; return the diff_id and counts.

    ``out`` receives only compressed bytes, in order, from this thread; hash them
    there (a blob writer) to get the layer digest without reading it back.
    """
    return _write(cs.upper, cs.changes, out, options)


def write_entries(entries: Iterable[Entry], out: Writable, options: LayerOptions) -> TarInfo:
    """A layer of ``entries`` exactly as given, in the order given (the caller sorts)."""
    return _write(None, entries, out, options)


def _write(upper: Path | None, changes: Iterable[Change | Entry], out: Writable,
           options: LayerOptions) -> TarInfo:
    blocks: _Sink
    if options.compression == "zstd:chunked":
        blocks = ChunkedBlocks(out, options)
    else:
        blocks = _Blocks(compressor(out, options))
    writer = _TarWriter(blocks, options.source_date_epoch)
    root = "" if upper is None else os.fspath(upper)
    try:
        for change in changes:
            try:
                if isinstance(change, Entry):
                    writer.put(change)
                else:
                    writer.add(root, change)
            except OSError as exc:
                # The tree changed under us or cannot be read: say which path.
                where = change.name if isinstance(change, Entry) else f"{root}/{change.path}"
                raise InvalidInput(
                    f"cannot add {where} to a layer: {exc.strerror or exc}"
                ) from exc
        writer.close()
        diff_id = blocks.finish()
    except BaseException:
        blocks.abort()
        raise
    return TarInfo(diff_id, blocks.size, options.compression, writer.entries,
                   blocks.annotations, tuple(blocks.spans))


def write_tree(root: Path, out: Writable, options: LayerOptions) -> TarInfo:
    """A layer holding everything under ``root`` (a base layer); the same bytes as
    ``write_changeset(diff_trees(None, root), ...)``, walking while writing."""
    return _write(root, walk_tree(root), out, options)
