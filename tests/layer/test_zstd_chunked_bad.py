"""A zstd:chunked TOC, footer or annotation that lies is one clear InvalidInput line
(issue 11, "Bad input"), never a traceback, a huge allocation or a wrong offset passed on."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

import pytest
import zstandard

from lamina.errors import InvalidInput
from lamina.layer import zstdchunked as zc

BLOB = 100_000
TOC_AT = 90_008  # after an 8-byte skippable frame header at 90_000


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def reg(name: str, offset: int, end: int, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"type": "reg", "name": name, "size": size, "digest": digest(name.encode()),
            "offset": offset, "endOffset": end, **extra}


def parse(entries: list[Any], *, doc: dict[str, Any] | None = None,
          raw: bytes | None = None, checksum: str | None = None,
          loc: zc.TocLocation | None = None, blob_size: int = BLOB,
          tar_split: tuple[int, int, int] = (0, 0, 0)) -> zc.Toc:
    if raw is None:
        raw = json.dumps(doc if doc is not None else {"version": 1, "entries": entries}).encode()
    compressed = zstandard.ZstdCompressor().compress(raw)
    loc = loc or zc.TocLocation(TOC_AT, len(compressed), len(raw), *tar_split)
    return zc.parse_toc(compressed, checksum or digest(compressed), blob_size, loc)


def fails(match: str, fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(InvalidInput, match=match) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith("zstd:chunked layer: ")
    return message


def test_a_good_toc_parses() -> None:
    toc = parse([{"type": "dir", "name": "d/", "mode": 493},
                 reg("d/a", 100, 200),
                 reg("d/big", 200, 400, size=30, chunkSize=10, chunkDigest=digest(b"1")),
                 {"type": "chunk", "name": "d/big", "offset": 300, "chunkOffset": 10,
                  "chunkSize": 20, "chunkDigest": digest(b"2"), "chunkType": "zeros"},
                 {"type": "reg", "name": "d/empty"}])
    assert [e.name for e in toc.entries] == ["d/", "d/a", "d/big", "d/empty"]
    assert [(c.offset, c.end_offset, c.chunk_offset, c.chunk_size, c.chunk_type)
            for c in toc.entries[2].chunks] == [(200, 300, 0, 10, "data"),
                                                (300, 400, 10, 20, "zeros")]
    toc_end = TOC_AT + toc.location.length
    assert zc.frame_spans(toc, BLOB) == [(0, 100), (100, 100), (200, 100), (300, 100),
                                         (400, TOC_AT - 8 - 400),
                                         (TOC_AT - 8, toc_end - TOC_AT + 8),
                                         (toc_end, BLOB - toc_end)]


def test_garbage_footer() -> None:
    fails("magic missing", zc.read_footer, os.urandom(zc.FOOTER_SIZE))
    fails("footer is truncated", zc.read_footer, b"GNUlInUx")
    fails("not a skippable frame", zc.read_footer, os.urandom(64) + b"GNUlInUx")
    bad_type = (zc.SKIPPABLE_MAGIC + struct.pack("<I", 64) + struct.pack("<7Q", 8, 1, 1, 2, 0, 0, 0)
                + b"GNUlInUx")
    fails("unknown manifest type 2", zc.read_footer, bad_type)


def test_garbage_annotations() -> None:
    fails("expected 4 decimal numbers", zc.toc_location,
          {zc.POSITION_ANNOTATION: "12:34:x:1"})
    fails("expected 3 decimal numbers", zc.toc_location,
          {zc.POSITION_ANNOTATION: "12:34:56:1", zc.TAR_SPLIT_ANNOTATION: "1:2"})
    fails("unknown manifest type 7", zc.toc_location, {zc.POSITION_ANNOTATION: "1:2:3:7"})
    assert zc.toc_location({}) is None
    # skopeo 1.9's names are read too
    legacy = {"io.containers.zstd-chunked.manifest-position": "10:20:30:1",
              "io.containers.zstd-chunked.manifest-checksum": "sha256:" + "a" * 64}
    assert zc.toc_location(legacy) == zc.TocLocation(10, 20, 30)
    assert zc.toc_checksum(legacy) == "sha256:" + "a" * 64


def test_checksum_mismatch() -> None:
    fails("TOC checksum mismatch", parse, [], checksum="sha256:" + "0" * 64)
    fails("is not a sha256 digest", parse, [], checksum="md5:abc")


def test_toc_outside_the_blob() -> None:
    fails("lies outside the blob", parse, [], loc=zc.TocLocation(BLOB - 10, 400, 20))
    fails("lies outside the blob", parse, [], loc=zc.TocLocation(2, 10, 20))


def test_payload_outside_the_blob() -> None:
    fails("outside the blob's payload area", parse, [reg("a", 100, 95_000)])
    fails("outside the blob's payload area", parse, [reg("a", 0, 100)])
    fails("outside the blob's payload area", parse, [reg("a", 300, 200)])


def test_overlapping_and_out_of_order_chunks() -> None:
    fails("overlaps or precedes", parse, [reg("a", 100, 200), reg("b", 150, 300)])
    fails("overlaps or precedes", parse, [reg("a", 500, 600), reg("b", 100, 200)])
    chunked = [reg("c", 100, 300, size=20, chunkSize=10, chunkDigest=digest(b"1")),
               {"type": "chunk", "name": "c", "offset": 50, "chunkOffset": 10,
                "chunkSize": 10, "chunkDigest": digest(b"2")}]
    fails("overlaps or precedes|outside", parse, chunked)


def test_chunks_that_do_not_cover_the_file() -> None:
    gap = [reg("c", 100, 300, size=20, chunkSize=10, chunkDigest=digest(b"1")),
           {"type": "chunk", "name": "c", "offset": 200, "chunkOffset": 12,
            "chunkSize": 8, "chunkDigest": digest(b"2")}]
    fails("chunk 1 starts at byte 12 of the file, expected 10", parse, gap)
    short = [reg("c", 100, 300, size=30, chunkSize=10, chunkDigest=digest(b"1")),
             {"type": "chunk", "name": "c", "offset": 200, "chunkOffset": 10,
              "chunkSize": 10, "chunkDigest": digest(b"2")}]
    fails("chunks cover 20 of 30 bytes", parse, short)
    fails("chunk entry without a regular file", parse,
          [{"type": "chunk", "name": "x", "offset": 100}])
    fails("has no chunkDigest", parse,
          [reg("c", 100, 300, size=20, chunkSize=10),
           {"type": "chunk", "name": "c", "offset": 200, "chunkOffset": 10, "chunkSize": 10}])


def test_oversized_toc_and_tar_split() -> None:
    fails("larger than the 64 MiB limit", parse, [],
          loc=zc.TocLocation(TOC_AT, 100, zc.MAX_TOC_SIZE + 1), blob_size=1 << 40)
    fails("tar-split of .* larger than the 256 MiB limit", parse, [],
          loc=zc.TocLocation(TOC_AT, 100, 50, TOC_AT + 200, 10, zc.MAX_TAR_SPLIT_SIZE + 1),
          blob_size=1 << 40)


def test_toc_that_inflates_past_its_position() -> None:
    """A bomb: the position promises 100 bytes, the frame holds 10 MB of zeros."""
    bomb = zstandard.ZstdCompressor().compress(bytes(10 << 20))
    loc = zc.TocLocation(TOC_AT, len(bomb), 100)
    fails("TOC inflates to more bytes, its position says 100", zc.parse_toc, bomb,
          digest(bomb), BLOB, loc)


def test_not_a_toc() -> None:
    fails("TOC is not JSON", parse, [], raw=b"\xff not json")
    fails("unsupported TOC version 2", parse, [], doc={"version": 2, "entries": []})
    fails("TOC has no entries list", parse, [], doc={"version": 1})
    fails("unknown type 'socket'", parse, [{"type": "socket", "name": "s"}])
    fails("appears twice", parse, [{"type": "dir", "name": "d/"}, {"type": "dir", "name": "d/"}])
    fails("mode must be a non-negative integer", parse, [{"type": "dir", "name": "d/",
                                                          "mode": "0755"}])
    fails("not an RFC 3339 time", parse, [{"type": "dir", "name": "d/", "modtime": "yesterday"}])
    fails("not valid base64", parse, [{"type": "dir", "name": "d/", "xattrs": {"user.a": "%%"}}])
    fails("with content but no digest", parse, [{"type": "reg", "name": "f", "size": 3,
                                                 "offset": 100, "endOffset": 200}])
    fails("a dir with a payload offset", parse, [{"type": "dir", "name": "d/", "offset": 100}])
    fails("symlink without linkName", parse, [{"type": "symlink", "name": "l"}])


def test_tar_split_checked_against_the_toc() -> None:
    data = zstandard.ZstdCompressor().compress(b'{"type":2,"payload":"","position":0}\n')
    toc = parse([], doc={"version": 1, "entries": [], "tarSplitDigest": digest(data)},
                tar_split=(95_000, len(data), 37))
    assert zc.parse_tar_split(data, toc).startswith(b'{"type":2')
    fails("tar-split checksum mismatch", zc.parse_tar_split, data[:-1] + b"\0", toc)
    fails("TOC names a tar-split but its position is unknown", parse, [],
          doc={"version": 1, "entries": [], "tarSplitDigest": digest(data)})
