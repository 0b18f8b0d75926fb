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

from collections.abc import Callable
from dataclasses import dataclass

from lamina.digest import Digest, Readable, read_full
from lamina.errors import IntegrityError
from lamina.layer.compress import (
    BLOCK_SIZE,
    BlockCompressor,
    Writable,
    compressor,
    open_decompressed,
)
from lamina.layer.options import LayerOptions
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


def compress_checked(stream: Readable, out: Writable, options: LayerOptions,
                     progress: Callable[[int], None] | None = None) -> int:
    """Compress the plain tar in ``stream`` into ``out`` as ``options`` say, reading
    every tar header on the way (``InvalidInput`` for a malformed one); returns the tar's
    size.  The caller checks the tar's digest (its diff_id) with its own reader."""
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
    return tee.count
