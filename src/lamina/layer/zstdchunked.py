"""The zstd:chunked layer format, read side: footer, TOC position, TOC, frame spans.

zstd:chunked is containers/storage's variant of ``application/vnd.oci.image.layer.v1.tar+zstd``
(containers/storage ``pkg/chunked/internal/minimal/compression.go``, the reference: the
format has no other specification).  The blob is an ordinary zstd stream of a tar, cut so
that every regular file's payload (or each chunk of it) is a zstd frame of its own, then:

    [frame: tar headers][frame: payload 1][frame: padding + headers][frame: payload 2]...
    [frame: last padding + end of archive]
    [skippable frame: TOC]        zstd-compressed JSON; its sha256 is the
                                  ``manifest-checksum`` annotation
    [skippable frame: tar-split]  zstd-compressed JSON lines (vbatts/tar-split) that
                                  rebuild the exact tar from the files
    [skippable frame: footer]     64 bytes, little-endian u64s: TOC offset, length,
                                  uncompressed length, type (1), tar-split offset,
                                  length, uncompressed length, then "GNUlInUx"

A zstd reader skips the skippable frames (RFC 8878 §3.1.2), so every zstd reader sees
the plain tar.  A reader that knows the format fetches the footer and TOC, and then only
the frames it lacks.  Nothing here trusts the blob: the TOC is checked against the
checksum from the descriptor, sizes are bounded, and every offset must lie inside the
blob, in order, without overlaps; anything else is one ``InvalidInput`` line.

The older layout (containers/storage before August 2023, e.g. skopeo 1.9) is read too: a
40-byte footer ending in "GnUlInUx" without tar-split, and annotations named
``io.containers.zstd-chunked.*`` (renamed ``io.github.containers.*`` in November 2022).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zstandard

from lamina.errors import InvalidInput

# Annotation keys (minimal/compression.go ManifestChecksumKey, ManifestInfoKey, TarSplitInfoKey).
CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION_ANNOTATION = "io.github.containers.zstd-chunked.manifest-position"
TAR_SPLIT_ANNOTATION = "io.github.containers.zstd-chunked.tarsplit-position"
_LEGACY_PREFIX = "io.containers.zstd-chunked."
_PREFIX = "io.github.containers.zstd-chunked."
# The same TOC checksum and position under the names containers/storage used up to v1.43
# (commit f98fa39, November 2022, renamed them; the format did not change): Debian 12's
# podman 4.3 / buildah 1.28 / skopeo 1.9 look only for these before a partial pull
# (pkg/chunked/storage_linux.go GetDiffer), and pull the whole blob without them.  They
# read the TOC where the position says and never the footer, so lamina's current layout
# (64-byte footer, tar-split) serves them as it is (tests/registry/test_podman_partial.py).
# Readers from v1.44 on look only at the new names; lamina's reader prefers them too.
LEGACY_CHECKSUM_ANNOTATION = _LEGACY_PREFIX + "manifest-checksum"
LEGACY_POSITION_ANNOTATION = _LEGACY_PREFIX + "manifest-position"

# RFC 8878 §3.1.2: magic 0x184D2A50 (any of 0x184D2A5?), then a little-endian u32 size.
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
SKIPPABLE_HEADER = 8
FOOTER_MAGIC = b"GNUlInUx"
LEGACY_FOOTER_MAGIC = b"GnUlInUx"
FOOTER_DATA_SIZE = 64
LEGACY_FOOTER_DATA_SIZE = 40
# The bytes to fetch from the end of a blob to read its footer (either layout).
FOOTER_SIZE = SKIPPABLE_HEADER + FOOTER_DATA_SIZE
MANIFEST_TYPE_CRFS = 1

# Bounds on what a reader inflates.  containers/storage allows a 150 MiB TOC
# (compression_linux.go maxTocSize); lamina's TOC holds ~300 bytes per file, so 64 MiB
# is ~200k files.  The tar-split carries every header block (base64), ~1 KB a file.
MAX_TOC_SIZE = 64 << 20
MAX_TAR_SPLIT_SIZE = 256 << 20

ENTRY_TYPES = frozenset({"reg", "hardlink", "symlink", "dir", "char", "block", "fifo"})
_CHUNK = "chunk"


@dataclass(frozen=True)
class TocLocation:
    """Where the TOC (and the tar-split) sit in the blob: offsets of their data, after
    the 8-byte skippable frame header."""

    offset: int
    length: int
    uncompressed_length: int
    tar_split_offset: int = 0  # 0: no tar-split (the older layout)
    tar_split_length: int = 0
    tar_split_uncompressed_length: int = 0


@dataclass(frozen=True)
class ChunkedFooter:
    location: TocLocation
    size: int  # bytes the footer frame takes at the end of the blob (72, or 48 if legacy)
    legacy: bool


@dataclass(frozen=True)
class TocChunk:
    """One payload frame: compressed ``offset``..``end_offset`` in the blob holding the
    file's bytes ``chunk_offset``..``chunk_offset + chunk_size``."""

    offset: int
    end_offset: int
    chunk_offset: int
    chunk_size: int
    chunk_digest: str  # sha256:...; the file's digest when the file is one chunk
    chunk_type: str = "data"  # or "zeros" (containers/storage: a hole of >= 1 KiB zeros)


@dataclass(frozen=True)
class TocEntry:
    type: str  # reg, hardlink, symlink, dir, char, block, fifo
    name: str  # as in the tar header ("dir/" for directories)
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int | None = None  # seconds since the epoch
    link_name: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    digest: str | None = None  # sha256 of the content; None for empty files
    chunks: tuple[TocChunk, ...] = ()


@dataclass(frozen=True)
class Toc:
    version: int
    entries: tuple[TocEntry, ...]
    location: TocLocation
    tar_split_digest: str | None = None
    raw: bytes = field(default=b"", repr=False)  # the uncompressed JSON


def _bad(what: str) -> InvalidInput:
    return InvalidInput(f"zstd:chunked layer: {what}")


# ----------------------------------------------------------------------------- footer


def read_footer(tail: bytes) -> ChunkedFooter:
    """Parse the footer from the last bytes of a blob (``FOOTER_SIZE`` of them, or the
    whole blob if it is shorter)."""
    if tail.endswith(FOOTER_MAGIC):
        data_size, legacy = FOOTER_DATA_SIZE, False
    elif tail.endswith(LEGACY_FOOTER_MAGIC):
        data_size, legacy = LEGACY_FOOTER_DATA_SIZE, True
    else:
        raise _bad("no zstd:chunked footer at the end of the blob (magic missing)")
    size = SKIPPABLE_HEADER + data_size
    if len(tail) < size:
        raise _bad(f"footer is truncated ({len(tail)} of {size} bytes)")
    frame = tail[-size:]
    if frame[:4] != SKIPPABLE_MAGIC or struct.unpack_from("<I", frame, 4)[0] != data_size:
        raise _bad("footer is not a skippable frame of the expected size")
    if legacy:
        off, length, ulen, kind = struct.unpack_from("<4Q", frame, SKIPPABLE_HEADER)
        ts = (0, 0, 0)
    else:
        off, length, ulen, kind, *rest = struct.unpack_from("<7Q", frame, SKIPPABLE_HEADER)
        ts = (rest[0], rest[1], rest[2])
    if kind != MANIFEST_TYPE_CRFS:
        raise _bad(f"unknown manifest type {kind} in the footer")
    return ChunkedFooter(TocLocation(off, length, ulen, *ts), size, legacy)


def _ints(text: str, count: int, key: str) -> list[int]:
    parts = text.split(":")
    if len(parts) != count or not all(p.isdigit() and p.isascii() for p in parts):
        raise _bad(f"annotation {key} is {text[:80]!r}, expected {count} decimal numbers "
                   "separated by ':'")
    return [int(p) for p in parts]


def _annotation(annotations: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for key in (_PREFIX + name, _LEGACY_PREFIX + name):
        value = annotations.get(key)
        if value is not None:
            return key, value
    return None


def toc_location(annotations: Mapping[str, str]) -> TocLocation | None:
    """The TOC position a descriptor's annotations give, or None when the layer is not
    marked zstd:chunked.  ``manifest-position`` is ``offset:length:lengthUncompressed:type``,
    ``tarsplit-position`` ``offset:length:lengthUncompressed``."""
    found = _annotation(annotations, "manifest-position")
    if found is None:
        return None
    key, value = found
    off, length, ulen, kind = _ints(value, 4, key)
    if kind != MANIFEST_TYPE_CRFS:
        raise _bad(f"annotation {key}: unknown manifest type {kind}")
    ts = (0, 0, 0)
    found = _annotation(annotations, "tarsplit-position")
    if found is not None:
        a, b, c = _ints(found[1], 3, found[0])
        ts = (a, b, c)
    return TocLocation(off, length, ulen, *ts)


def toc_checksum(annotations: Mapping[str, str]) -> str | None:
    """The TOC's checksum (``sha256:...`` of the compressed TOC) from the annotations."""
    found = _annotation(annotations, "manifest-checksum")
    return None if found is None else found[1]


# -------------------------------------------------------------------------------- TOC

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_TIME = re.compile(r"(-?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)")


def _check_location(loc: TocLocation, blob_size: int) -> None:
    if loc.offset < SKIPPABLE_HEADER or loc.offset + loc.length > blob_size:
        raise _bad(f"TOC at {loc.offset}+{loc.length} lies outside the blob ({blob_size} bytes)")
    if loc.length > MAX_TOC_SIZE or loc.uncompressed_length > MAX_TOC_SIZE:
        raise _bad(f"TOC of {max(loc.length, loc.uncompressed_length)} bytes is larger "
                   f"than the {MAX_TOC_SIZE >> 20} MiB limit")
    if loc.tar_split_offset:
        end = loc.tar_split_offset + loc.tar_split_length
        if loc.tar_split_offset < loc.offset + loc.length + SKIPPABLE_HEADER or end > blob_size:
            raise _bad(f"tar-split at {loc.tar_split_offset}+{loc.tar_split_length} lies "
                       f"outside the blob or over the TOC")
        if max(loc.tar_split_length, loc.tar_split_uncompressed_length) > MAX_TAR_SPLIT_SIZE:
            raise _bad(f"tar-split of {loc.tar_split_uncompressed_length} bytes is larger "
                       f"than the {MAX_TAR_SPLIT_SIZE >> 20} MiB limit")


def _inflate(data: bytes, expected: int, limit: int, what: str) -> bytes:
    # Read at most one byte past what the position promises (itself within ``limit``):
    # a frame that inflates to gigabytes costs no more than that.
    assert expected <= limit
    out = bytearray()
    try:
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(data, read_across_frames=False) as reader:
            while len(out) <= expected:
                piece = reader.read(expected + 1 - len(out))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as e:
        raise _bad(f"{what} is not valid zstd ({e})") from None
    if len(out) != expected:
        got = "more" if len(out) > expected else str(len(out))
        raise _bad(f"{what} inflates to {got} bytes, its position says {expected}")
    return bytes(out)


def _verify(data: bytes, expected: str, what: str) -> None:
    if not _DIGEST.fullmatch(expected):
        raise _bad(f"{what} checksum {expected[:80]!r} is not a sha256 digest")
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != expected:
        raise _bad(f"{what} checksum mismatch: expected {expected}, got {got}")


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"{where}: {key} must be a non-negative integer")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise _bad(f"{where}: {key} must be a string")
    return value


def _time(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    text = _str(obj, key, where)
    if not text:
        return None
    m = _TIME.fullmatch(text)
    if m is None:
        raise _bad(f"{where}: {key} {text[:40]!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year == 1 and month == 1 and day == 1 and hour == minute == second == 0:
        return None  # Go's zero time: containers/storage before 2024 wrote it for "unset"
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m.group(7)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def _xattrs(obj: Mapping[str, Any], where: str) -> tuple[tuple[str, bytes], ...]:
    raw = obj.get("xattrs") or {}
    if not isinstance(raw, dict):
        raise _bad(f"{where}: xattrs must be an object")
    out = []
    for key, value in sorted(raw.items()):
        if not isinstance(value, str):
            raise _bad(f"{where}: xattr {key!r} must be a base64 string")
        try:
            out.append((key, base64.b64decode(value, validate=True)))
        except binascii.Error:
            raise _bad(f"{where}: xattr {key!r} is not valid base64") from None
    return tuple(out)


def _digest(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _str(obj, key, where)
    if value and not _DIGEST.fullmatch(value):
        raise _bad(f"{where}: {key} {value[:80]!r} is not a sha256 digest")
    return value or None


class _Builder:
    """Folds the TOC's ``chunk`` entries into their file and checks every offset."""

    def __init__(self, payload_end: int) -> None:
        self.payload_end = payload_end  # payload frames lie before the TOC's frame
        self.entries: list[TocEntry] = []
        self.last_end = 0
        self.names: set[str] = set()
        self.times: dict[str, int | None] = {}   # modtime text -> seconds (few distinct)

    def _frame(self, start: int, end: int, where: str) -> None:
        if not 0 < start < end <= self.payload_end:
            raise _bad(f"{where}: payload at {start}..{end} lies outside the blob's "
                       f"payload area (0..{self.payload_end})")
        if start < self.last_end:
            raise _bad(f"{where}: payload at {start} overlaps or precedes the one before "
                       f"(ending at {self.last_end})")
        self.last_end = end

    def add(self, i: int, items: Sequence[Any]) -> int:
        """Add entry ``i`` of ``items`` and the chunk entries after it; return how many
        of those were used.  A plain entry (no xattrs, at most one payload frame: nearly
        all of them) takes the lean path; anything else, or anything the lean path
        doubts, the checked one, which says exactly what is wrong."""
        obj = items[i]
        if type(obj) is dict:
            nxt = items[i + 1] if i + 1 < len(items) else None
            entry = self._plain(obj, nxt)
            if entry is not None:
                self.names.add(entry.name)
                self.entries.append(entry)
                return 0
        return self._checked(i, obj, items)

    def _plain(self, obj: dict[str, Any], nxt: Any) -> TocEntry | None:
        """``obj`` as an entry if it is plainly well-formed, else None (never raises).
        The same checks as ``_checked``, with fewer calls: a delta pull parses its
        layer's TOC and that of each layer it may cut before its plan, ~2,000 entries
        per 100 MB layer (bench_delta)."""
        g = obj.get
        kind, name = g("type"), g("name")
        size, mode, uid, gid = g("size", 0), g("mode", 0), g("uid", 0), g("gid", 0)
        major, minor, offset, end = g("devMajor", 0), g("devMinor", 0), g("offset", 0), \
            g("endOffset", 0)
        link, digest, modtime = g("linkName", ""), g("digest", ""), g("modtime", "")
        if not (type(kind) is str and kind in ENTRY_TYPES and type(name) is str and name
                and name not in self.names and type(link) is str and type(digest) is str
                and type(modtime) is str and type(size) is int and type(mode) is int
                and type(uid) is int and type(gid) is int and type(major) is int
                and type(minor) is int and type(offset) is int and type(end) is int
                and size >= 0 and mode >= 0 and uid >= 0 and gid >= 0 and major >= 0
                and minor >= 0 and not g("xattrs")
                and (not digest or _DIGEST.fullmatch(digest))
                and (link or kind not in ("hardlink", "symlink"))):
            return None
        mtime = self.times.get(modtime, -1)
        if mtime == -1:
            try:
                mtime = self.times[modtime] = _time(obj, "modtime", "")
            except InvalidInput:
                return None
        chunks: tuple[TocChunk, ...] = ()
        if kind == "reg" and size > 0:
            if type(nxt) is dict and nxt.get("type") == _CHUNK:
                return None   # several chunks: the checked path folds them
            chunk_size, chunk_digest = g("chunkSize", 0), g("chunkDigest", "")
            chunk_type = g("chunkType", "")
            if not (digest and type(chunk_size) is int and chunk_size in (0, size)
                    and type(chunk_digest) is str
                    and (not chunk_digest or _DIGEST.fullmatch(chunk_digest))
                    and type(chunk_type) is str and chunk_type in ("", "data", "zeros")
                    and 0 < offset < end <= self.payload_end and offset >= self.last_end):
                return None
            self.last_end = end
            chunks = (TocChunk(offset, end, 0, size, chunk_digest or digest,
                               chunk_type or "data"),)
        elif offset or end:
            return None
        return TocEntry(kind, name, size, mode, uid, gid, mtime, link, major, minor, (),
                        digest or None, chunks)

    def _checked(self, i: int, obj: Any, items: Sequence[Any]) -> int:
        where = f"TOC entry {i}"
        if not isinstance(obj, dict):
            raise _bad(f"{where} is not an object")
        kind = _str(obj, "type", where)
        name = _str(obj, "name", where)
        where = f"TOC entry {i} ({name[:100]!r})"
        if kind == _CHUNK:
            raise _bad(f"{where}: a chunk entry without a regular file before it")
        if kind not in ENTRY_TYPES:
            raise _bad(f"{where}: unknown type {kind!r}")
        if not name:
            raise _bad(f"TOC entry {i} has no name")
        if name in self.names:
            raise _bad(f"{where}: the name appears twice")
        self.names.add(name)
        size = _int(obj, "size", where)
        digest = _digest(obj, "digest", where)
        chunks: list[TocChunk] = []
        used = 0
        if kind == "reg" and size > 0:
            chunk_objs = [obj]
            for nxt in items[i + 1:]:
                if not (isinstance(nxt, dict) and nxt.get("type") == _CHUNK):
                    break
                if nxt.get("name") != name:
                    raise _bad(f"{where}: a chunk entry names {nxt.get('name')!r}")
                chunk_objs.append(nxt)
            used = len(chunk_objs) - 1
            chunks = self._chunks(chunk_objs, obj, size, digest, where)
        elif _int(obj, "offset", where) or _int(obj, "endOffset", where):
            raise _bad(f"{where}: a {kind or 'empty file'} with a payload offset")
        if kind in ("hardlink", "symlink") and not _str(obj, "linkName", where):
            raise _bad(f"{where}: a {kind} without linkName")
        self.entries.append(TocEntry(
            type=kind, name=name, size=size, mode=_int(obj, "mode", where),
            uid=_int(obj, "uid", where), gid=_int(obj, "gid", where),
            mtime=_time(obj, "modtime", where), link_name=_str(obj, "linkName", where),
            devmajor=_int(obj, "devMajor", where), devminor=_int(obj, "devMinor", where),
            xattrs=_xattrs(obj, where), digest=digest, chunks=tuple(chunks)))
        return used

    def _chunks(self, objs: list[Any], main: Any, size: int, digest: str | None,
                where: str) -> list[TocChunk]:
        if digest is None:
            raise _bad(f"{where}: a regular file with content but no digest")
        end_offset = _int(main, "endOffset", where)
        starts = [_int(o, "offset", where) for o in objs]
        ends = [*starts[1:], end_offset]
        chunks = []
        position = 0
        for k, o in enumerate(objs):
            if k and _int(o, "chunkOffset", where) != position:
                raise _bad(f"{where}: chunk {k} starts at byte {o.get('chunkOffset')} of the "
                           f"file, expected {position}")
            chunk_size = _int(o, "chunkSize", where) or (size if len(objs) == 1 else 0)
            if chunk_size <= 0 or position + chunk_size > size:
                raise _bad(f"{where}: chunk {k} has a bad size {chunk_size}")
            chunk_digest = _digest(o, "chunkDigest", where) or (
                digest if len(objs) == 1 else None)
            if chunk_digest is None:
                raise _bad(f"{where}: chunk {k} has no chunkDigest")
            chunk_type = _str(o, "chunkType", where) or "data"
            if chunk_type not in ("data", "zeros"):
                raise _bad(f"{where}: chunk {k} has unknown chunkType {chunk_type!r}")
            self._frame(starts[k], ends[k], where)
            chunks.append(TocChunk(starts[k], ends[k], position, chunk_size, chunk_digest,
                                   chunk_type))
            position += chunk_size
        if position != size:
            raise _bad(f"{where}: chunks cover {position} of {size} bytes")
        return chunks


def parse_toc(compressed_toc: bytes, expected_checksum: str, blob_size: int,
              location: TocLocation) -> Toc:
    """Check and parse the TOC read from ``location`` of a blob of ``blob_size`` bytes.

    ``expected_checksum`` is the ``manifest-checksum`` annotation: the TOC is trusted
    only after its sha256 matches.  Entries come back in TOC order, each regular file
    with its payload frames (``chunk`` entries folded in).
    """
    doc, items, raw = _toc_document(compressed_toc, expected_checksum, blob_size, location)
    ts_digest = _digest(doc, "tarSplitDigest", "TOC")
    if ts_digest is not None and not location.tar_split_offset:
        raise _bad("TOC names a tar-split but its position is unknown")
    builder = _Builder(location.offset - SKIPPABLE_HEADER)
    i = 0
    while i < len(items):
        i += 1 + builder.add(i, items)
    return Toc(1, tuple(builder.entries), location, ts_digest, raw)


def _toc_document(compressed_toc: bytes, expected_checksum: str, blob_size: int,
                  location: TocLocation) -> tuple[dict[str, Any], list[Any], bytes]:
    """The TOC checked against its checksum, inflated and read: the JSON object, its
    ``entries`` list and the uncompressed bytes."""
    _check_location(location, blob_size)
    if len(compressed_toc) != location.length:
        raise _bad(f"TOC is {len(compressed_toc)} bytes, the position says {location.length}")
    _verify(compressed_toc, expected_checksum, "TOC")
    raw = _inflate(compressed_toc, location.uncompressed_length, MAX_TOC_SIZE, "TOC")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"TOC is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _bad("TOC is not a JSON object")
    version = doc.get("version")
    if version != 1:
        raise _bad(f"unsupported TOC version {version!r}")
    items = doc.get("entries")
    if not isinstance(items, list):
        raise _bad("TOC has no entries list")
    return doc, items, raw


def parse_tar_split(compressed: bytes, toc: Toc) -> bytes:
    """The tar-split JSON lines, checked against the TOC's ``tarSplitDigest``."""
    loc = toc.location
    if toc.tar_split_digest is None or not loc.tar_split_offset:
        raise _bad("the layer has no tar-split")
    if len(compressed) != loc.tar_split_length:
        raise _bad(f"tar-split is {len(compressed)} bytes, the position says "
                   f"{loc.tar_split_length}")
    _verify(compressed, toc.tar_split_digest, "tar-split")
    return _inflate(compressed, loc.tar_split_uncompressed_length, MAX_TAR_SPLIT_SIZE,
                    "tar-split")


def frame_spans(toc: Toc, blob_size: int) -> list[tuple[int, int]]:
    """The blob cut at every frame boundary the TOC names, as ``(offset, length)`` byte
    ranges (the store's ``spans``, store/chunks.py) covering ``0..blob_size`` once, in
    order: each payload frame on its own, the header frames between them, then the rest
    of the tar, the TOC, the tar-split and the footer frames."""
    cuts: list[int] = []
    pos = 0
    for entry in toc.entries:
        for c in entry.chunks:
            cuts += [c.offset, c.end_offset]
            pos = c.end_offset
    loc = toc.location
    tail = [loc.offset - SKIPPABLE_HEADER, loc.offset + loc.length]
    if loc.tar_split_offset:
        tail += [loc.tar_split_offset - SKIPPABLE_HEADER,
                 loc.tar_split_offset + loc.tar_split_length]
    for cut in tail:
        if cut > blob_size or cut < pos:
            raise _bad(f"TOC frames end at {pos}, past {cut} (blob of {blob_size} bytes)")
        pos = cut
    return spans_at([*cuts, *tail], blob_size)


def spans_at(cuts: Sequence[int], blob_size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` spans of ``0..blob_size`` cut at ``cuts`` (ascending; repeats
    and the two ends are dropped)."""
    spans = []
    start = 0
    for cut in [*cuts, blob_size]:
        if cut > start:
            spans.append((start, cut - start))
            start = cut
    return spans


def annotations_for(location: TocLocation, compressed_toc: bytes) -> dict[str, str]:
    """The descriptor annotations of a chunked layer: what containers/storage writes, and
    the checksum and position under their pre-v1.44 names as well (see
    ``LEGACY_CHECKSUM_ANNOTATION``)."""
    checksum = "sha256:" + hashlib.sha256(compressed_toc).hexdigest()
    position = (f"{location.offset}:{location.length}:"
                f"{location.uncompressed_length}:{MANIFEST_TYPE_CRFS}")
    out = {CHECKSUM_ANNOTATION: checksum, POSITION_ANNOTATION: position,
           LEGACY_CHECKSUM_ANNOTATION: checksum, LEGACY_POSITION_ANNOTATION: position}
    if location.tar_split_offset:
        out[TAR_SPLIT_ANNOTATION] = (f"{location.tar_split_offset}:{location.tar_split_length}:"
                                     f"{location.tar_split_uncompressed_length}")
    # Sorted, as a recorded conversion gives them back (transport/compressing.py keeps
    # them as sorted JSON): the manifest is the same bytes whether converted now or before.
    return dict(sorted(out.items()))


def annotations_from_blob(read_at: Callable[[int, int], bytes], blob_size: int) -> dict[str, str]:
    """Re-derive a lamina/containers chunked blob's annotations from its own bytes
    (footer, then TOC): ``read_at(offset, length) -> bytes``.  For a layer found again
    (a build cache hit) whose descriptor was not kept."""
    tail = read_at(max(0, blob_size - FOOTER_SIZE), min(FOOTER_SIZE, blob_size))
    footer = read_footer(tail)
    loc = footer.location
    _check_location(loc, blob_size)
    return annotations_for(loc, read_at(loc.offset, loc.length))
