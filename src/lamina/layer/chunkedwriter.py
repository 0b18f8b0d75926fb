"""Writing zstd:chunked layers (the format: see ``zstdchunked``).

The tar is lamina's own (``tarwriter._TarWriter``: the same bytes, so the same diff_id,
as a gzip or zstd layer of the same change); this module is the sink it writes into.
Header bytes collect into one frame until a regular file's payload starts; the payload
is cut into chunks, each compressed as a frame of its own; then the next header frame.
At the end: the TOC, the tar-split and the footer, each in a skippable frame, and the
descriptor annotations.

Deterministic on any machine: every frame is compressed on its own, single-threaded, at
a fixed level, with its content size in the header (zstd's output depends only on the
input and the parameters); threads only decide *when* a frame is compressed, and frames
are written in order.  TOC and tar-split JSON are compact, keys in a fixed order.

Chunking rule: a payload is cut at content-defined points, so that the same bytes give
the same chunks wherever they sit in a file (an insertion moves the cuts with the
content).  A cut follows every 20-byte window whose bytes fall into the classes
"0 1 1 ... 1" of a fixed random split of the 256 byte values (a rolling hash of one bit
per byte, found with ``bytes.translate`` + ``find`` at C speed: ~2^-20 per position), but
never less than 1 MiB after the previous cut, and at the latest 8 MiB after it.  So a
file under 1 MiB is one frame, and chunks average ~2 MiB: large enough that splitting
costs zstd almost no ratio (its level-3 window is 2 MiB), small enough that a change
inside a big file costs a few MiB on the wire.  containers/storage cuts at a bup-style
rolling sum (~64 KiB chunks, zero runs as their own chunks); lamina's TOC says the same
things, so readers need not know which rule made it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import zstandard

from lamina.digest import Digest
from lamina.errors import InvalidInput
from lamina.layer.compress import Writable
from lamina.layer.options import LayerOptions
from lamina.layer.zstdchunked import (
    FOOTER_DATA_SIZE,
    FOOTER_MAGIC,
    MANIFEST_TYPE_CRFS,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    TocLocation,
    annotations_for,
    spans_at,
)

CHUNK_MIN = 1 << 20
CHUNK_MAX = 8 << 20
_ANCHOR_BITS = 20
# Byte value i is in class bit i of this fixed string: a split that no data is tuned to.
_SEED = hashlib.sha256(b"lamina zstd:chunked chunk boundaries").digest()
_CLASSES = bytes((_SEED[i >> 3] >> (i & 7)) & 1 for i in range(256))
# "0" then nineteen "1"s: no proper suffix is a prefix, so matches never overlap.
_ANCHOR = b"\x00" + b"\x01" * (_ANCHOR_BITS - 1)
# Frames go to the compressing threads in batches of at least this many bytes.
_BATCH = 1 << 20

TOC_TYPES = {b"0": "reg", b"1": "hardlink", b"2": "symlink", b"3": "char", b"4": "block",
          b"5": "dir", b"6": "fifo"}


def chunk_end(window: bytearray, final: bool) -> int:
    """Where the chunk starting at ``window[0]`` ends; ``window`` holds ``CHUNK_MAX``
    bytes, or fewer when ``final`` (the rest of the file)."""
    n = len(window)
    if n > CHUNK_MIN:
        lo = CHUNK_MIN - len(_ANCHOR)
        k = window[lo : min(n, CHUNK_MAX)].translate(_CLASSES).find(_ANCHOR)
        if k >= 0:
            return lo + k + len(_ANCHOR)
        if n >= CHUNK_MAX:
            return CHUNK_MAX
    return n


def file_shrank(path: str, done: int, size: int) -> InvalidInput:
    return InvalidInput(f"{path}: file shrank while being written to a layer "
                        f"({done} of {size} bytes); is something changing the tree?")


def _read_exact(fd: int, view: memoryview, path: str, done: int, size: int) -> None:
    while len(view):
        got = os.readv(fd, [view])
        if got == 0:
            raise file_shrank(path, done, size)
        view = view[got:]
        done += got


def _skippable(data: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(data)) + data


def _rfc3339(seconds: int) -> str | None:
    # Go's encoding (containers/storage marshals a time.Time) can only write years 0-9999.
    if not -62135596800 < seconds <= 253402300799:
        return None
    t = datetime.fromtimestamp(seconds, UTC)
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T"
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z")


_Result = tuple[bytes, str | None]  # a compressed frame, and its input's digest if asked


class _Frames:
    """Compresses frames on a pool and writes them to ``out`` in order, recording each
    frame's (start, end) in the output.  Small frames (most files are small) travel to
    the pool in batches of ~1 MiB: one task per frame would cost more than it compresses.
    """

    def __init__(self, out: Writable, level: int, threads: int) -> None:
        self._out = out
        self._level = level
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lamina-zstd")
        self._ahead = threads * 2 + 2
        self._pending: deque[Future[list[_Result]]] = deque()
        self._batch: list[tuple[bytes | bytearray | memoryview, bool]] = []
        self._batch_bytes = 0
        self._queued = 0
        self.bounds: list[tuple[int, int]] = []
        self.digests: list[str | None] = []
        self.count = 0

    def _work(self, batch: list[tuple[bytes | bytearray | memoryview, bool]]) -> list[_Result]:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=self._level)
        return [(cctx.compress(data),
                 ("sha256:" + hashlib.sha256(data).hexdigest()) if digest else None)
                for data, digest in batch]

    def add(self, data: bytes | bytearray | memoryview, digest: bool = False) -> int:
        """Queue one frame; returns its index.  ``data`` must not change afterwards."""
        self._batch.append((data, digest))
        self._batch_bytes += len(data)
        if self._batch_bytes >= _BATCH:
            self._submit()
        self._queued += 1
        return self._queued - 1

    def _submit(self) -> None:
        if self._batch:
            self._pending.append(self._pool.submit(self._work, self._batch))
            self._batch, self._batch_bytes = [], 0
        while len(self._pending) > self._ahead:
            self._drain_one()

    def _drain_one(self) -> None:
        for frame, digest in self._pending.popleft().result():
            self._out.write(frame)
            self.bounds.append((self.count, self.count + len(frame)))
            self.digests.append(digest)
            self.count += len(frame)

    def drain(self) -> None:
        self._submit()
        while self._pending:
            self._drain_one()

    def write_raw(self, data: bytes) -> None:
        self.drain()
        self._out.write(data)
        self.count += len(data)

    def close(self) -> None:
        for item in self._pending:
            item.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


class _TarSplit:
    """vbatts/tar-split's JSON lines (tar/storage/entry.go), zstd-compressed: segments of
    raw tar bytes (headers, padding) and file entries (name, size, crc64 of the content),
    numbered by ``position``: enough to rebuild the exact tar from the files."""

    def __init__(self, level: int) -> None:
        self._cobj = zstandard.ZstdCompressor(level=level).compressobj()
        self._out = bytearray()
        self.size = 0
        self._position = 0

    def _add(self, line: str) -> None:
        data = line.encode("utf-8")
        self.size += len(data)
        self._out += self._cobj.compress(data)
        self._position += 1

    def segment(self, raw: bytes | bytearray) -> None:
        payload = base64.b64encode(raw).decode("ascii")
        self._add(f'{{"type":2,"payload":"{payload}","position":{self._position}}}\n')

    def file(self, name: bytes, size: int, crc: int | None) -> None:
        try:
            named = '"name":' + json.dumps(name.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:  # entry.go SetName: invalid UTF-8 goes in name_raw
            named = f'"name_raw":"{base64.b64encode(name).decode("ascii")}"'
        sized = f'"size":{size},' if size else ""
        # Go's hash.Sum appends the CRC big-endian; no content, no checksum (null).
        payload = ("null" if crc is None
                   else '"' + base64.b64encode(crc.to_bytes(8, "big")).decode("ascii") + '"')
        self._add(f'{{"type":1,{named},{sized}"payload":{payload},'
                  f'"position":{self._position}}}\n')

    def finish(self) -> bytes:
        self._out += self._cobj.flush()
        return bytes(self._out)


@dataclass
class _Entry:
    kind: str
    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: list[tuple[str, bytes]]
    digest: str | None = None
    crc: int | None = None
    chunks: list[tuple[int, int, int]] = field(default_factory=list)  # frame, offset, size

    def toc(self, frames: _Frames) -> list[dict[str, object]]:
        """This entry's TOC objects, fields in containers/storage's FileMetadata order
        (minimal/compression.go), zero values left out as its ``omitempty`` does."""
        main: dict[str, object] = {"type": self.kind,
                                   "name": self.name.decode("utf-8", "replace")}
        if self.linkname:
            main["linkName"] = self.linkname.decode("utf-8", "replace")
        for key, value in (("mode", self.mode), ("size", self.size), ("uid", self.uid),
                           ("gid", self.gid)):
            if value:
                main[key] = value
        modtime = _rfc3339(self.mtime)
        if modtime is not None:
            main["modtime"] = modtime
        if self.devmajor:
            main["devMajor"] = self.devmajor
        if self.devminor:
            main["devMinor"] = self.devminor
        if self.xattrs:
            main["xattrs"] = {k: base64.b64encode(v).decode("ascii")
                              for k, v in sorted(self.xattrs)}
        if not self.chunks:
            return [main]
        main["digest"] = self.digest
        first, last = frames.bounds[self.chunks[0][0]], frames.bounds[self.chunks[-1][0]]
        main["offset"] = first[0]
        main["endOffset"] = last[1]
        if len(self.chunks) == 1:
            return [main]
        out = [main]
        for k, (frame, offset, size) in enumerate(self.chunks):
            obj = main if k == 0 else {"type": "chunk", "name": main["name"],
                                       "offset": frames.bounds[frame][0]}
            obj["chunkSize"] = size
            if offset:
                obj["chunkOffset"] = offset
            obj["chunkDigest"] = frames.digests[frame]
            if k:
                out.append(obj)
        return out


class ChunkedBlocks:
    """The sink ``tarwriter`` writes a zstd:chunked layer into (the ``_Blocks``
    interface: ``write``, ``skip``, ``read_from``, ``entry``, ``finish``, ``abort``)."""

    def __init__(self, out: Writable, options: LayerOptions) -> None:
        level = options.effective_level
        self._frames = _Frames(out, level, options.threads)
        self._level = level
        self._hasher = hashlib.sha256()
        self.size = 0
        self._meta = bytearray()  # the header frame being collected
        self._segment = bytearray()  # raw bytes since the last tar-split cut
        self._tar_split = _TarSplit(level)
        self._entries: list[_Entry] = []
        self._open: _Entry | None = None  # its tar-split file entry is not out yet
        self.annotations: Mapping[str, str] = {}
        self.spans: list[tuple[int, int]] = []

    def write(self, data: bytes | bytearray) -> None:
        self._meta += data
        self._segment += data
        self._hasher.update(data)
        self.size += len(data)

    def skip(self, n: int) -> None:
        if n:
            self.write(bytes(n))

    def _close_file(self) -> None:
        if self._open is not None:
            e = self._open
            self._tar_split.file(e.name, e.size if e.kind == "reg" else 0, e.crc)
            self._open = None

    def entry(self, name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
              typeflag: bytes, linkname: bytes, devmajor: int, devminor: int,
              xattrs: list[tuple[str, bytes]] | None) -> None:
        """Called once an entry's header bytes are written (asm/disassemble.go: a
        segment of the raw bytes up to here, then the file entry after its content)."""
        self._close_file()
        if self._segment:
            self._tar_split.segment(self._segment)
            self._segment = bytearray()
        e = _Entry(TOC_TYPES[typeflag], name, mode, uid, gid, size, mtime, linkname,
                   devmajor, devminor, list(xattrs or ()))
        self._entries.append(e)
        self._open = e

    def _close_meta(self) -> None:
        if self._meta:
            self._frames.add(self._meta)
            self._meta = bytearray()

    def read_from(self, fd: int, size: int, path: str) -> None:
        """Copy a regular file's ``size`` bytes into the layer as chunk frames."""

        def fill(view: memoryview, done: int) -> None:
            _read_exact(fd, view, path, done, size)

        self.payload(size, fill)

    def payload(self, size: int, fill: Callable[[memoryview, int], None]) -> None:
        """The current entry's ``size`` content bytes, as chunk frames: ``fill(view,
        done)`` fills ``view`` exactly with the bytes after the first ``done`` (from a
        file, or from a tar being converted: ``layer.verify.recompress``)."""
        if not size:
            return
        from fastcrc import crc64

        self._close_meta()
        e = self._entries[-1]
        file_hash = hashlib.sha256()
        crc = None
        left = size
        carry = memoryview(b"")
        position = 0
        while left or len(carry):
            want = min(left, CHUNK_MAX - len(carry))
            window = bytearray(len(carry) + want)
            window[: len(carry)] = carry
            fill(memoryview(window)[len(carry):], size - left)
            left -= want
            end = chunk_end(window, final=not left)
            chunk = memoryview(window)[:end]
            carry = memoryview(window)[end:]
            self._hasher.update(chunk)
            file_hash.update(chunk)
            crc = crc64.go_iso(chunk, crc)
            alone = position == 0 and not left and not len(carry)
            e.chunks.append((self._frames.add(chunk, digest=not alone), position, end))
            position += end
        e.digest = "sha256:" + file_hash.hexdigest()
        e.crc = crc
        self.size += size

    def finish(self) -> Digest:
        """Write the last frame, the TOC, the tar-split and the footer; the diff_id."""
        self._close_file()
        if self._segment:  # the last padding and the end-of-archive blocks
            self._tar_split.segment(self._segment)
            self._segment = bytearray()
        self._close_meta()
        frames = self._frames
        frames.drain()
        entries = [obj for e in self._entries for obj in e.toc(frames)]
        tar_split = self._tar_split.finish()
        toc_json = json.dumps(
            {"version": 1, "entries": entries,
             "tarSplitDigest": "sha256:" + hashlib.sha256(tar_split).hexdigest()},
            separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        toc = zstandard.ZstdCompressor(level=self._level).compress(toc_json)
        toc_at = frames.count + SKIPPABLE_HEADER
        split_at = toc_at + len(toc) + SKIPPABLE_HEADER
        loc = TocLocation(toc_at, len(toc), len(toc_json),
                          split_at, len(tar_split), self._tar_split.size)
        footer = struct.pack("<7Q", loc.offset, loc.length, loc.uncompressed_length,
                             MANIFEST_TYPE_CRFS, loc.tar_split_offset, loc.tar_split_length,
                             loc.tar_split_uncompressed_length) + FOOTER_MAGIC
        assert len(footer) == FOOTER_DATA_SIZE
        tail = _skippable(toc) + _skippable(tar_split) + _skippable(footer)
        end = frames.count + len(tail)
        self.spans = spans_at([start for start, _ in frames.bounds] + [
            toc_at - SKIPPABLE_HEADER, split_at - SKIPPABLE_HEADER,
            end - SKIPPABLE_HEADER - FOOTER_DATA_SIZE], end)
        frames.write_raw(tail)
        frames.close()
        self.annotations = annotations_for(loc, toc)
        return Digest.from_hasher(self._hasher)

    def abort(self) -> None:
        self._frames.close()
