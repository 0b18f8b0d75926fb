"""Checking that a layer blob can be unpacked, without unpacking it: decompress once
(within the expansion limit), read every tar header (checksums, structure) while hashing
the tar, and compare the hash with the config's diff_id.  What ``load`` checks before it
tags an image (Docker's load checks diff_ids too) and what ``fsck`` checks for every
image layer: the same errors ``apply_layer`` would meet, found before anyone needs the
files.

``compress_checked`` is the same check for a plain tar that is being compressed anyway
(``load`` stores a ``docker save`` archive's uncompressed layers as gzip): the headers are
read from the very blocks handed to the compressor, so the check costs no extra pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lamina.digest import Digest, Readable, read_full
from lamina.errors import IntegrityError, Unsupported
from lamina.layer.chunkedwriter import TOC_TYPES, ChunkedBlocks
from lamina.layer.compress import (
    BLOCK_SIZE,
    BlockCompressor,
    Writable,
    compressor,
    open_decompressed,
)
from lamina.layer.options import LayerOptions
from lamina.layer.paths import shown
from lamina.layer.tarreader import TarReader


@dataclass(frozen=True)
class CheckedLayer:
    diff_id: Digest
    uncompressed_size: int
    entries: int


def check_layer(stream: Readable, expected_diff_id: Digest) -> CheckedLayer:
    """Raise ``IntegrityError`` if the tar in ``stream`` (gzip, zstd or plain) does not
    hash to ``expected_diff_id`` or is damaged, ``InvalidInput`` if a tar header is
    malformed, ``ExpansionExceeded`` past the expansion limit."""
    source = open_decompressed(stream, expected_diff_id.algorithm)
    try:
        reader = TarReader(source)
        entries = 0
        while reader.next() is not None:
            entries += 1
        reader.drain()
        diff_id = source.digest()
        size = source.count
    finally:
        source.close()
    if diff_id != expected_diff_id:
        raise IntegrityError(f"its content has diff_id {diff_id}, but the config says "
                             f"{expected_diff_id}")
    return CheckedLayer(diff_id, size, entries)


class _Tee:
    """TarReader's block source: whole ``BLOCK_SIZE`` blocks of ``stream`` (the last one
    shorter), each also handed to the compressor — the tar writer's block size, so the
    compressed bytes depend only on the tar (compress.py: deterministic output)."""

    def __init__(self, stream: Readable, sink: BlockCompressor,
                 progress: Callable[[int], None] | None) -> None:
        self._stream = stream
        self._sink = sink
        self._progress = progress
        self.count = 0

    def read_block(self) -> bytes:
        block = read_full(self._stream, BLOCK_SIZE)
        if block:
            self._sink.put(block)
            self.count += len(block)
            if self._progress is not None:
                self._progress(self.count)
        return block


@dataclass(frozen=True)
class Recompressed:
    """What ``recompress`` wrote: the tar's size and digest (its diff_id, unchanged by
    the conversion) and, for zstd:chunked, the descriptor annotations naming its TOC."""

    tar_size: int
    diff_id: Digest
    annotations: Mapping[str, str]


def compress_checked(stream: Readable, out: Writable, options: LayerOptions,
                     progress: Callable[[int], None] | None = None) -> int:
    """Compress the plain tar in ``stream`` into ``out`` as ``options`` say, reading
    every tar header on the way (``InvalidInput`` for a malformed one); returns the tar's
    size.  The caller checks the tar's digest (its diff_id) with its own reader."""
    return _compress(stream, out, options, progress)[0]


def recompress(stream: Readable, out: Writable, options: LayerOptions,
               progress: Callable[[int], None] | None = None) -> Recompressed:
    """Convert a layer (gzip, zstd, zstd:chunked or plain) to ``options.compression``:
    decompress it (within the expansion limit) and write the very same tar bytes
    through the chosen compressor, checking every header on the way.  The tar, so the
    diff_id, is unchanged; the compressed bytes depend only on the tar and the options
    (the writers are deterministic), so converting a layer twice gives the same blob."""
    source = open_decompressed(stream, "sha256")
    try:
        size, annotations = _compress(source, out, options, progress)
        return Recompressed(size, source.digest(), annotations)
    finally:
        source.close()


def _compress(stream: Readable, out: Writable, options: LayerOptions,
              progress: Callable[[int], None] | None) -> tuple[int, Mapping[str, str]]:
    if options.compression == "zstd:chunked":
        return _compress_chunked(stream, out, options, progress)
    comp = compressor(out, options)
    tee = _Tee(stream, comp, progress)
    try:
        reader = TarReader(tee)
        while reader.next() is not None:
            pass
        reader.drain()
        comp.finish()
    except BaseException:
        comp.close()
        raise
    return tee.count, {}


class _Held:
    """TarReader's block source for a zstd:chunked conversion: keeps the tar bytes it
    handed out until ``take`` (header bytes, which go to the chunked sink verbatim) or
    ``drop`` (payload bytes, which reach the sink through ``TarReader.data``)."""

    def __init__(self, stream: Readable, progress: Callable[[int], None] | None) -> None:
        self._stream = stream
        self._progress = progress
        self._held = bytearray()
        self._base = 0      # tar offset of _held[0]
        self.count = 0

    def read_block(self) -> bytes:
        block = read_full(self._stream, BLOCK_SIZE)
        if block:
            self._held += block
            self.count += len(block)
            if self._progress is not None:
                self._progress(self.count)
        return block

    def take(self, upto: int | None = None) -> bytes:
        """The held bytes before tar offset ``upto`` (default: all of them)."""
        n = len(self._held) if upto is None else upto - self._base
        data = bytes(self._held[:n])
        self.drop(self._base + n)
        return data

    def drop(self, upto: int) -> None:
        n = upto - self._base
        if n > 0:
            del self._held[:n]
            self._base = upto


class _Payload:
    """``ChunkedBlocks.payload``'s ``fill`` over the current entry's ``TarReader.data``
    views; the bytes it has passed on are dropped from ``_Held`` as it goes, so a big file
    is never held whole."""

    def __init__(self, reader: TarReader, held: _Held) -> None:
        self._reader = reader
        self._held = held
        self._views = reader.data()
        self._rest = memoryview(b"")

    def fill(self, view: memoryview, done: int) -> None:
        while len(view):
            if not len(self._rest):
                # never past the last view: the reader skips the padding on next()
                self._rest = next(self._views)
                self._held.drop(self._reader.offset)
            k = min(len(view), len(self._rest))
            view[:k] = self._rest[:k]
            self._rest = self._rest[k:]
            view = view[k:]


def _compress_chunked(stream: Readable, out: Writable, options: LayerOptions,
                      progress: Callable[[int], None] | None
                      ) -> tuple[int, Mapping[str, str]]:
    """The tar in ``stream`` written as zstd:chunked: every header (with any PAX or GNU
    long-name records, and the padding before it) goes to the sink as the raw bytes it
    is, each regular file's content through ``payload`` (a frame per chunk), as the tar
    writer feeds the same sink for a new layer: the same tar, framed per file."""
    held = _Held(stream, progress)
    blocks = ChunkedBlocks(out, options)
    try:
        reader = TarReader(held)
        while (e := reader.next()) is not None:
            blocks.write(held.take(reader.offset))
            typeflag = e.type.encode()
            if typeflag not in TOC_TYPES:
                raise Unsupported(f"tar entry {shown(e.name)} has type {e.type!r}, which "
                                  "zstd:chunked cannot describe")
            blocks.entry(os.fsencode(e.name), e.mode, e.uid, e.gid, e.size, e.mtime,
                         typeflag, os.fsencode(e.linkname), e.devmajor, e.devminor,
                         sorted(e.xattrs.items()))
            if e.size:
                blocks.payload(e.size, _Payload(reader, held).fill)
        reader.drain()
        blocks.write(held.take())
        blocks.finish()
    except BaseException:
        blocks.abort()
        raise
    return held.count, blocks.annotations
