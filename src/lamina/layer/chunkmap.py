"""A zstd:chunked blob as the chunk store keeps it: its frame spans, and which spans
hold which uncompressed content (the TOC's chunk digests).

The store never parses layers (store/chunks.py): this is where a chunked layer's TOC
turns into the ``spans`` a ``BlobWriter.publish`` cuts at, and, once the chunks are
stored, into ``chunk_contents`` rows (uncompressed digest → stored compressed frame) that
let a later delta pull reuse a frame it finds by the content it holds.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import zstandard

from lamina.digest import Digest
from lamina.errors import InvalidInput, LaminaError, NotFound
from lamina.layer.zstdchunked import (
    MAX_TOC_SIZE,
    Toc,
    frame_spans,
    parse_toc,
    toc_checksum,
    toc_location,
)
from lamina.store.chunks import ChunkedFile, Recipe
from lamina.store.store import Store


@dataclass(frozen=True)
class ChunkMap:
    """``spans``: the blob's frames, covering it once, in order.  ``contents``: for each
    payload frame, its index in ``spans`` and the digest of the bytes it inflates to."""

    spans: tuple[tuple[int, int], ...]
    contents: tuple[tuple[int, str], ...]


def chunk_map(toc: Toc, blob_size: int) -> ChunkMap:
    spans = frame_spans(toc, blob_size)
    index = {offset: i for i, (offset, _) in enumerate(spans)}
    contents = []
    for entry in toc.entries:
        for c in entry.chunks:
            i = index.get(c.offset)
            # A frame the spans cut elsewhere (cannot happen with a checked TOC) is
            # simply not offered for reuse.
            if i is not None and spans[i][1] == c.end_offset - c.offset:
                contents.append((i, c.chunk_digest))
    return ChunkMap(tuple(spans), tuple(contents))


def read_toc(read_at: Callable[[int, int], bytes], annotations: Mapping[str, str],
             blob_size: int) -> Toc | None:
    """The TOC the annotations point at, read with ``read_at(offset, length)`` and
    checked against their checksum; None if the layer is not marked chunked.
    ``InvalidInput`` when the TOC does not hold."""
    loc = toc_location(annotations)
    checksum = toc_checksum(annotations)
    if loc is None or checksum is None:
        return None
    if loc.offset < 0 or loc.offset + loc.length > blob_size or loc.length > MAX_TOC_SIZE:
        # Said why, in one line, before a byte is read: a position from a registry's
        # descriptor may name most of a big blob.
        return parse_toc(b"", checksum, blob_size, loc)
    return parse_toc(read_at(loc.offset, loc.length), checksum, blob_size, loc)


def record_contents(store: Store, blob: Digest, cmap: ChunkMap,
                    recipe: Recipe | None = None) -> int:
    """After ``blob`` was published as chunks cut at ``cmap.spans``: record which stored
    chunk holds which content.  ``recipe``: the one just written, if at hand (else it is
    read).  Returns the rows recorded (0 if the blob is kept whole)."""
    if recipe is None:
        try:
            recipe = store.blobs.chunks.read_recipe(blob)
        except NotFound:
            return 0
    if recipe.blob != blob or len(recipe.chunks) != len(cmap.spans):
        return 0
    rows = [(content, str(recipe.chunks[i][0]), recipe.chunks[i][1])
            for i, content in cmap.contents]
    store.meta.record_chunk_contents(rows)
    return len(rows)


def _pread_of(f: ChunkedFile) -> Callable[[int, int], bytes]:
    return lambda offset, n: f.pread(n, offset)


def cut_pending(store: Store, wanted: Collection[str],
                lease: Callable[[Sequence[str]], None]) -> int:
    """Cut into chunks the zstd:chunked layers the store keeps whole (``chunk_pending``:
    pulled or loaded with nothing to share then) that hold any content in ``wanted`` (a
    delta pull's TOC chunk digests), and record their contents, so the pull's plan
    finds them.  The cut reads each such layer once (its own TOC says where), checks it
    against its digest as it hashes the frames (a file at rest may have been damaged
    since it was stored: no frame of it is named unchecked), and keeps its file as the
    pack (a link, no copy).  A layer gone, cut already (its rows are recorded then),
    damaged, or whose TOC does not hold leaves the list; one that shares nothing stays
    on it.  Returns how many were cut."""
    cut = 0
    for blob_text, marks in store.meta.chunk_pending():
        blob = Digest.parse(blob_text)
        lease([blob_text])      # registered, then looked at: gc keeps it from now on
        try:
            done = _cut(store, blob, json.loads(marks), wanted)
        except (LaminaError, ValueError, OSError):
            done = None     # a TOC that does not hold, a file that is not its digest
        if done is not False:
            store.meta.drop_chunk_pending(blob_text)
            cut += bool(done)
    return cut


def _cut(store: Store, blob: Digest, annotations: Mapping[str, str],
         wanted: Collection[str]) -> bool | None:
    """Cut ``blob`` if it shares any of ``wanted``: True if cut now, False if it shares
    nothing (it stays whole and listed), None if gone or cut before (its rows are
    recorded now).  Off the list unless False."""
    try:
        f = open(store.blobs.path(blob), "rb")
    except FileNotFoundError:
        chunked = store.blobs.chunked(blob)
        if chunked is not None:
            # Cut already by a pull killed before its rows and this line (the whole
            # file goes after the recipe): record its contents, from its own TOC.
            toc = read_toc(_pread_of(chunked), annotations, chunked.size)
            if toc is not None:
                record_contents(store, blob, chunk_map(toc, chunked.size))
        return None
    with f:
        # One cutter at a time (another pull, or another layer of this one): else both
        # link the file in as a pack, and the later one finds the file gone midway.
        # An flock on the file itself: the kernel lets go when its holder dies.
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        size = os.fstat(f.fileno()).st_size
        toc = read_toc(lambda offset, n: os.pread(f.fileno(), n, offset), annotations, size)
        if toc is None:
            return None
        cmap = chunk_map(toc, size)
        if store.blobs.chunks.has_recipe(blob):
            # Cut by the one this waited for, or by one killed before the whole file
            # went: the rows (again: a row is a fact), and the file goes.
            record_contents(store, blob, cmap)
            store.blobs.drop_whole(blob)
            return None
        if not any(content in wanted for _, content in cmap.contents):
            return False
        recipe = store.blobs.put_chunked(blob, store.blobs.path(blob), cmap.spans)
    record_contents(store, blob, cmap, recipe)
    return True


def header_frames(tar_split: bytes) -> list[bytes]:
    """The uncompressed bytes of the frames between payloads (tar headers, padding, the
    end of the archive), in order, rebuilt from the tar-split: its raw segments, cut at
    every file entry that has content (vbatts/tar-split: segment, file, segment, ...).
    Compressed as the chunked writer compresses them (``compress_header``), they are
    the blob's own frames if it was written that way; a delta pull uses them instead of
    fetching ~100 bytes per file, and the whole blob's digest decides (never a frame
    alone: these frames have no digest of their own)."""
    frames: list[bytes] = []
    current = bytearray()
    for line in tar_split.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            kind = entry.get("type")
            if kind == 2:
                current += base64.b64decode(entry.get("payload") or "")
            elif kind == 1 and entry.get("size"):
                frames.append(bytes(current))
                current = bytearray()
        except (ValueError, AttributeError, TypeError, binascii.Error):
            raise InvalidInput("zstd:chunked layer: tar-split line is not a tar-split "
                               "entry") from None
    frames.append(bytes(current))
    return frames


def compress_header(data: bytes, level: int = 3) -> bytes:
    """One header frame as ``chunkedwriter`` writes it (its default level, content
    size in the frame header)."""
    return zstandard.ZstdCompressor(level=level).compress(data)
