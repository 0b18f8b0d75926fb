"""Helpers for the zstd:chunked tests: write a chunked layer, read it back, rebuild the
tar from its tar-split as containers/storage does."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import zstandard
from fastcrc import crc64

from lamina.layer import LayerOptions, TarInfo, write_tree
from lamina.layer import zstdchunked as zc


def chunked_layer(root: Path, **kw: object) -> tuple[bytes, TarInfo]:
    buf = io.BytesIO()
    info = write_tree(root, buf, LayerOptions(compression="zstd:chunked", **kw))  # type: ignore[arg-type]
    return buf.getvalue(), info


def read_toc(blob: bytes, annotations: dict[str, str] | None = None) -> zc.Toc:
    """The TOC through the reader's contract: position from the annotations (else the
    footer), checksum from the annotations."""
    loc = zc.toc_location(annotations) if annotations else None
    if loc is None:
        loc = zc.read_footer(blob[-zc.FOOTER_SIZE:]).location
    checksum = zc.toc_checksum(annotations or {}) or (
        "sha256:" + hashlib.sha256(blob[loc.offset : loc.offset + loc.length]).hexdigest())
    return zc.parse_toc(blob[loc.offset : loc.offset + loc.length], checksum, len(blob), loc)


def inflate(frame: bytes) -> bytes:
    obj = zstandard.ZstdDecompressor().decompressobj()
    out = obj.decompress(frame)
    assert obj.eof and not obj.unused_data, "a span is not exactly one zstd frame"
    return out


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_spans(blob: bytes, toc: zc.Toc) -> list[tuple[int, int]]:
    """frame_spans covers the blob once, in order, and each payload span inflates to its
    chunk (and the chunks of a file to the file's digest)."""
    spans = zc.frame_spans(toc, len(blob))  # (offset, length)
    assert all(length > 0 for _, length in spans)
    assert [off for off, _ in spans] == [0] + [o + n for o, n in spans[:-1]]
    assert spans[-1][0] + spans[-1][1] == len(blob)
    starts = {s for s, _ in spans}
    for e in toc.entries:
        whole = b""
        for c in e.chunks:
            assert c.offset in starts and (c.offset, c.end_offset - c.offset) in spans
            data = inflate(blob[c.offset : c.end_offset])
            assert len(data) == c.chunk_size and sha(data) == c.chunk_digest
            whole += data
        if e.chunks:
            assert sha(whole) == e.digest and len(whole) == e.size
    return spans


def rebuild_tar(tar_split: bytes, files: dict[str, bytes]) -> bytes:
    """vbatts/tar-split asm.WriteOutputTarStream: segments verbatim, file entries from
    ``files`` (by name), each checked against its CRC-64/ISO."""
    out = bytearray()
    positions = []
    for line in tar_split.splitlines():
        e = json.loads(line)
        positions.append(e["position"])
        if e["type"] == 2:
            out += base64.b64decode(e["payload"])
            continue
        assert e["type"] == 1
        name = e.get("name") or base64.b64decode(e["name_raw"]).decode("utf-8", "surrogateescape")
        size = e.get("size", 0)
        if size:
            data = files[name]
            assert len(data) == size
            assert crc64.go_iso(data).to_bytes(8, "big") == base64.b64decode(e["payload"]), name
            out += data
        else:
            assert e["payload"] is None
    assert positions == list(range(len(positions)))
    return bytes(out)
