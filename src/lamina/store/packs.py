"""Packs: many chunks in one file, the chunk store's bulk form (store/chunks.py).

A zstd:chunked layer has a frame per file, so a blob of 2,000 files is ~4,000 chunks.
Kept one file per chunk, a cold pull created ~4,000 files and spent ~17x a plain
pull's time doing it (bench_delta, session 3), and every chunk cost a whole file-system
block (the ten-variant store held 1.25x its unique bytes, mostly block rounding).  git
(packfiles), casync and borg keep small objects in packs for the same reasons.  A pack
is a plain file of chunks back to back, with an index beside it::

    packs/<name>.pack   chunk bytes, back to back
    packs/<name>.idx    which chunk lies where (binary, below); written last

``<name>`` is random: a chunk is checked against its own digest wherever it lies, so a
content name for the pack itself would only cost another hash.  The index is a pack's
commit point: a pack without one is debris of a crashed writer (gc removes it).  An
import, and the cut of a chunked layer kept whole (``layer/chunkmap.cut_pending``),
adopt the blob's own file as its pack (a hard link: no copy, no second fsync), so
keeping a chunked layer as chunks costs about what keeping it whole does; a delta pull
writes one pack of the frames it fetched.

Index format (big-endian): ``MAGIC``, a u64 count, then per chunk its sha256 (32 raw
bytes), u64 offset and u64 length, in pack order; then the sha256 of everything before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from lamina.digest import CHUNK, Digest
from lamina.errors import IntegrityError
from lamina.store.files import disk_error, fsync_dir

MAGIC = b"lamina-pack-index-v1\n"
_COUNT = struct.Struct(">Q")
_RECORD = struct.Struct(">32sQQ")
_TRAILER = 32
MAX_INDEX_BYTES = 256 << 20     # ~5 million chunks: far beyond any one blob
_FRESH = 0.05                   # a directory changed this recently may change again
                                # within its mtime's granularity: list it regardless


class PackEntry(NamedTuple):
    """A chunk in a pack (a tuple: a pack of a 2,000-file layer has ~4,000)."""

    digest: Digest
    offset: int
    length: int


def index_size(count: int) -> int:
    return len(MAGIC) + _COUNT.size + count * _RECORD.size + _TRAILER


def encode_index(entries: Sequence[PackEntry]) -> bytes:
    body = b"".join([MAGIC, _COUNT.pack(len(entries))]
                    + [_RECORD.pack(bytes.fromhex(e.digest.encoded), e.offset, e.length)
                       for e in entries])
    return body + hashlib.sha256(body).digest()


def decode_index(raw: bytes, pack_size: int, name: str) -> list[PackEntry]:
    """The entries of a pack's index; IntegrityError if it is damaged or names bytes
    outside a pack of ``pack_size`` bytes."""
    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"pack {name}: its index is damaged ({why}); "
                              "run `lamina fsck --repair`")

    head = len(MAGIC) + _COUNT.size
    if len(raw) < head + _TRAILER or not raw.startswith(MAGIC):
        raise bad("not a pack index")
    (count,) = _COUNT.unpack_from(raw, len(MAGIC))
    if len(raw) != index_size(count):
        raise bad(f"{len(raw)} bytes for {count} chunks")
    if hashlib.sha256(raw[:-_TRAILER]).digest() != raw[-_TRAILER:]:
        raise bad("checksum mismatch")
    entries: list[PackEntry] = []
    for i in range(count):
        digest, offset, length = _RECORD.unpack_from(raw, head + i * _RECORD.size)
        if length <= 0 or offset + length > pack_size:
            raise bad(f"chunk {i} lies outside the pack's {pack_size} bytes")
        entries.append(PackEntry(Digest("sha256", digest.hex()), offset, length))
    return entries


class PackWriter:
    """A pack being written: ``ingest/pack-<random>``, locked like any ingest file (gc
    removes it once its writer is gone).  ``add`` appends a chunk; ``commit`` makes it
    durable and gives it its name and index."""

    def __init__(self, ingest: Path) -> None:
        self.path = ingest / f"pack-{os.urandom(8).hex()}"
        self.entries: list[PackEntry] = []
        self.size = 0
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o644)
        except OSError as e:
            raise disk_error(e, "a chunk pack") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._closed = False

    def add(self, digest: Digest, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.pwrite(self.fd, view, self.size + len(data) - len(view)):]
        except OSError as e:
            raise disk_error(e, "a chunk pack") from None
        self.entries.append(PackEntry(digest, self.size, len(data)))
        self.size += len(data)

    def copy(self, digest: Digest, src: int, offset: int, length: int) -> None:
        """Append ``length`` bytes of the file ``src`` from ``offset`` (copied in the
        kernel where it can: copy_file_range, a reflink where extents can be shared)."""
        done = 0
        try:
            while done < length:
                try:
                    n = os.copy_file_range(src, self.fd, length - done, offset + done,
                                           self.size + done)
                except OSError:
                    n = 0
                if n <= 0:
                    piece = os.pread(src, min(CHUNK << 2, length - done), offset + done)
                    if not piece:
                        raise IntegrityError("the source of a chunk ended early")
                    n = os.pwrite(self.fd, piece, self.size + done)
                done += n
        except OSError as e:
            raise disk_error(e, "a chunk pack") from None
        self.entries.append(PackEntry(digest, self.size, length))
        self.size += length

    def commit(self, pack_dir: Path) -> str:
        """fsync, rename into ``pack_dir`` with its index; the pack's name."""
        name = os.urandom(16).hex()
        try:
            os.fsync(self.fd)
            pack_dir.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, pack_dir / f"{name}.pack")
            self._closed = True
            os.close(self.fd)
            write_index(pack_dir, name, self.entries)
        except OSError as e:
            raise disk_error(e, "a chunk pack") from None
        return name

    def drop(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def adopt(pack_dir: Path, source: Path, entries: Sequence[PackEntry]) -> str:
    """Make the store file ``source`` (about to be removed by its owner) a pack whose
    chunks are ``entries``: a second name for the same inode, no bytes copied."""
    name = os.urandom(16).hex()
    try:
        with open(source, "rb") as f:
            os.fsync(f.fileno())
        pack_dir.mkdir(parents=True, exist_ok=True)
        os.link(source, pack_dir / f"{name}.pack")
        write_index(pack_dir, name, entries)
    except OSError as e:
        with contextlib.suppress(OSError):
            (pack_dir / f"{name}.pack").unlink()
        raise disk_error(e, "a chunk pack") from None
    return name


def write_index(pack_dir: Path, name: str, entries: Sequence[PackEntry]) -> None:
    """Write (or replace) a pack's index durably; its pack is durable already."""
    tmp = pack_dir / f".{name}.idx-{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            data = memoryview(encode_index(entries))
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, pack_dir / f"{name}.idx")
        fsync_dir(pack_dir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class Location(NamedTuple):
    """Where a chunk's bytes lie (a tuple: thousands are made per pack read)."""

    path: str       # the pack (or loose chunk) file
    offset: int
    length: int


class PackSet:
    """Where the packed chunks are: every pack's index, read on first use and again when
    the pack directory changes (another process committed or removed a pack)."""

    def __init__(self, pack_dir: Path) -> None:
        self.pack_dir = pack_dir
        self._lock = threading.Lock()
        self._where: dict[Digest, Location] = {}
        self._packs: dict[str, list[PackEntry]] = {}
        self.damaged: dict[str, str] = {}     # pack name -> why its index is unusable
        self._seen: tuple[int, int] | None = None

    def locate(self, digest: Digest, fresh: bool = False) -> Location | None:
        """Where ``digest`` lies in some pack; ``fresh``: look at the directory again
        even if it seems unchanged (a reader that must find it)."""
        if fresh:
            self._reload(True)
        where = self._where.get(digest)
        if where is None and not fresh and self._reload(False):
            where = self._where.get(digest)
        return where

    def known(self, digest: Digest) -> Location | None:
        """``locate`` without looking at the directory: for a writer testing thousands
        of chunks right after a ``refresh``."""
        return self._where.get(digest)

    def refresh(self) -> None:
        self._reload(True)

    def packs(self) -> dict[str, list[PackEntry]]:
        """Every readable pack's entries, as the directory holds them now."""
        self._reload(True)
        with self._lock:
            return dict(self._packs)

    def pack_path(self, name: str) -> Path:
        return self.pack_dir / f"{name}.pack"

    def index_path(self, name: str) -> Path:
        return self.pack_dir / f"{name}.idx"

    def added(self, name: str, entries: Iterable[PackEntry]) -> None:
        """A pack this process committed (seen without listing the directory)."""
        with self._lock:
            self._take(name, list(entries))

    def removed(self, name: str) -> None:
        """A pack this process removed."""
        with self._lock:
            self.damaged.pop(name, None)
            if self._packs.pop(name, None) is not None:
                self._rebuild()

    def _rebuild(self) -> None:
        self._where.clear()
        for n, e in list(self._packs.items()):
            self._take(n, e)

    def _take(self, name: str, entries: list[PackEntry]) -> None:
        self._packs[name] = entries
        path = str(self.pack_path(name))
        for e in entries:
            self._where.setdefault(e.digest, Location(path, e.offset, e.length))

    def _reload(self, force: bool) -> bool:
        """List the directory if it changed (or ``force``); True if it was listed."""
        try:
            st = os.stat(self.pack_dir)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_ino)
        recent = time.time() - st.st_mtime < _FRESH
        if not force and stamp == self._seen and not recent:
            return False
        names = {e.name[:-4] for e in os.scandir(self.pack_dir)
                 if e.name.endswith(".idx") and not e.name.startswith(".")}
        with self._lock:
            self._seen = stamp
            for gone in set(self.damaged) - names:
                del self.damaged[gone]
            stale = set(self._packs) - names
            changed = {n for n in names & set(self._packs)
                       if self._index_changed(n)}
            if stale or changed:
                # Packs went (gc) or were rewritten: rebuild the whole map.
                for n in stale | changed:
                    del self._packs[n]
                self._rebuild()
            for name in sorted(names - set(self._packs)):
                self._load(name)
        return True

    def _index_changed(self, name: str) -> bool:
        try:
            size = os.stat(self.index_path(name)).st_size
        except FileNotFoundError:
            return True
        return size != index_size(len(self._packs[name]))

    def _load(self, name: str) -> None:
        try:
            pack_size = os.stat(self.pack_path(name)).st_size
            with open(self.index_path(name), "rb") as f:
                raw = f.read(MAX_INDEX_BYTES + 1)
            if len(raw) > MAX_INDEX_BYTES:
                raise IntegrityError(f"pack {name}: its index is over {MAX_INDEX_BYTES} bytes")
            self._take(name, decode_index(raw, pack_size, name))
            self.damaged.pop(name, None)
        except FileNotFoundError:
            return      # removed meanwhile (gc), or its pack is gone: nothing to read
        except IntegrityError as e:
            self.damaged[name] = str(e)
