"""``parse_toc``'s per-entry fast path (issue 11: a delta pull reads two TOCs before its
plan) says exactly what the checked path says: the same entries for good TOCs, and for
every broken field the same error."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard
from test_zstd_chunked_bad import BLOB, TOC_AT, digest, reg

from lamina.errors import InvalidInput
from lamina.layer import zstdchunked as zc

GOOD: list[Any] = [
    {"type": "dir", "name": "d/", "mode": 493, "modtime": "2024-05-01T10:00:00Z"},
    reg("d/a", 100, 200, mode=420, uid=1, gid=2, modtime="2024-05-01T10:00:00+02:00"),
    reg("d/big", 200, 400, size=30, chunkSize=10, chunkDigest=digest(b"1")),
    {"type": "chunk", "name": "d/big", "offset": 300, "chunkOffset": 10, "chunkSize": 20,
     "chunkDigest": digest(b"2"), "chunkType": "zeros"},
    {"type": "reg", "name": "d/empty"},
    reg("d/z", 400, 500, chunkType="zeros", chunkSize=10, chunkDigest=digest(b"z")),
    {"type": "symlink", "name": "d/l", "linkName": "a"},
    {"type": "hardlink", "name": "d/h", "linkName": "d/a"},
    {"type": "char", "name": "d/c", "devMajor": 1, "devMinor": 3},
    reg("d/x", 600, 700, xattrs={"user.k": "dmFsdWU="}),
]

BAD_VALUES: list[Any] = [None, -1, 0, 1, True, 1.5, "", "x", [], {}, 10**20, "sha256:00"]
FIELDS = ["type", "name", "size", "mode", "uid", "gid", "modtime", "linkName", "digest",
          "offset", "endOffset", "devMajor", "devMinor", "xattrs", "chunkSize",
          "chunkDigest", "chunkType", "chunkOffset"]


def pack(entries: list[Any]) -> tuple[bytes, str, int, zc.TocLocation]:
    """The arguments of ``parse_toc`` for a TOC of ``entries``."""
    raw = json.dumps({"version": 1, "entries": entries}).encode()
    compressed = zstandard.ZstdCompressor().compress(raw)
    return (compressed, digest(compressed), BLOB,
            zc.TocLocation(TOC_AT, len(compressed), len(raw)))


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except InvalidInput as e:
        return ("error", str(e))


def checked_only(monkeypatch: pytest.MonkeyPatch, *args: Any) -> Any:
    """``parse_toc`` with the fast path off: every entry through the checked path."""
    with monkeypatch.context() as m:
        m.setattr(zc._Builder, "_plain", lambda self, obj, nxt: None)
        return outcome(zc.parse_toc, *args)


def variants() -> Iterator[tuple[str, list[Any]]]:
    """GOOD with one field of one entry set to each bad value (or removed)."""
    for i in range(len(GOOD)):
        for field in FIELDS:
            for value in [*BAD_VALUES, "<removed>"]:
                entries = copy.deepcopy(GOOD)
                if value == "<removed>":
                    if field not in entries[i]:
                        continue
                    del entries[i][field]
                else:
                    entries[i][field] = value
                yield f"{i}.{field}={value!r}", entries
    yield "an entry that is a list", [*GOOD[:2], [1, 2], *GOOD[2:]]
    yield "a chunk first", [GOOD[3], *GOOD]
    yield "a name twice", [*GOOD, GOOD[1]]
    yield "frames out of order", [GOOD[0], reg("b", 300, 400), reg("a", 100, 200)]


def test_the_fast_path_says_what_the_checked_path_says(monkeypatch: pytest.MonkeyPatch) -> None:
    good = pack(GOOD)
    assert isinstance(outcome(zc.parse_toc, *good), zc.Toc)
    assert outcome(zc.parse_toc, *good) == checked_only(monkeypatch, *good)
    seen = {"ok": 0, "error": 0}
    for label, entries in variants():
        args = pack(entries)
        fast, slow = outcome(zc.parse_toc, *args), checked_only(monkeypatch, *args)
        assert fast == slow, label
        seen["error" if isinstance(fast, tuple) else "ok"] += 1
    assert seen["ok"] > 50 and seen["error"] > 300   # both kinds were tried
