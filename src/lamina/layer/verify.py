"""Checking that a layer blob can be unpacked, without unpacking it: decompress once
(within the expansion limit), read every tar header (checksums, structure) while hashing
the tar, and compare the hash with the config's diff_id.  What ``load`` checks before it
tags an image (Docker's load checks diff_ids too) and what ``fsck`` checks for every
image layer: the same errors ``apply_layer`` would meet, found before anyone needs the
files."""

from __future__ import annotations

from dataclasses import dataclass

from lamina.digest import Digest, Readable
from lamina.errors import IntegrityError
from lamina.layer.compress import open_decompressed
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
