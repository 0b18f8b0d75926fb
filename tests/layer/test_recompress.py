"""#11.1: ``layer.verify.recompress`` writes another producer's tar unchanged through
the zstd:chunked sink: PAX records (long names, xattrs), GNU long names, hard links,
devices and FIFOs keep their exact header bytes (the diff_id), and the TOC describes
them."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest
import zstandard

from lamina.errors import InvalidInput
from lamina.layer import zstdchunked as zc
from lamina.layer.options import LayerOptions
from lamina.layer.verify import recompress


def _member(t: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
            **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)




def test_foreign_tar_keeps_its_bytes_as_zstd_chunked() -> None:
    raw = _gnu_and_pax()
    blob_out = io.BytesIO()
    made = recompress(io.BytesIO(gzip.compress(raw)), blob_out,
                      LayerOptions(compression="zstd:chunked"))
    blob = blob_out.getvalue()
    assert str(made.diff_id) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert made.tar_size == len(raw)
    frames = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob),
                                                        read_across_frames=True)
    assert frames.read() == raw
    loc = zc.toc_location(made.annotations)
    assert loc is not None
    toc = zc.parse_toc(blob[loc.offset:loc.offset + loc.length],
                       zc.toc_checksum(made.annotations) or "", len(blob), loc)
    kinds = {e.name: e.type for e in toc.entries}
    assert kinds["usr/" + "l" * 150] == "reg"
    assert kinds["usr/hard"] == "hardlink" and kinds["dev/null"] == "char"
    assert kinds["run/fifo"] == "fifo"
    cap = next(e for e in toc.entries if e.name == "cap")
    assert dict(cap.xattrs) == {"security.capability": b"\x01"}
    # the same input, the same blob
    again = io.BytesIO()
    recompress(io.BytesIO(raw), again, LayerOptions(compression="zstd:chunked"))
    assert again.getvalue() == blob


def _gnu_and_pax() -> bytes:
    """A GNU-format tar (long names by 'L' records) followed by PAX members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as t:
        _member(t, "usr/", tarfile.DIRTYPE, mode=0o755)
        _member(t, "usr/" + "l" * 150, data=b"long name\n")
        _member(t, "usr/big", data=bytes(range(256)) * 20_000, uid=1000, gid=1000)
        _member(t, "usr/hard", tarfile.LNKTYPE, linkname="usr/big")
        _member(t, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        _member(t, "run/fifo", tarfile.FIFOTYPE)
        t.format = tarfile.PAX_FORMAT
        _member(t, "cap", data=b"x", pax_headers={"SCHILY.xattr.security.capability": "\x01"})
    return out.getvalue()


def test_truncated_tar_is_refused() -> None:
    raw = _gnu_and_pax()
    with pytest.raises(InvalidInput, match="truncated"):
        recompress(io.BytesIO(raw[:3000]), io.BytesIO(), LayerOptions(compression="zstd:chunked"))
