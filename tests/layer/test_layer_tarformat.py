"""The tar format helpers and reader edge cases."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from layer_helpers import apply_bytes, make_tar, member

from lamina.errors import InvalidInput, UnsafeArchive
from lamina.layer import iter_tar_entries
from lamina.layer import tarformat as tf
from lamina.layer.paths import clean_name, sort_key


@pytest.mark.parametrize("size", [1, 5, 88, 89, 90, 91, 985, 986, 995, 996, 997, 5000])
def test_pax_record_length_counts_its_own_digits(size: int) -> None:
    record = tf.pax_record("k", b"v" * size)
    length = int(record.split(b" ", 1)[0])
    assert length == len(record)
    assert tf.parse_pax(record) == {"k": b"v" * size}


def test_parse_pax_rejects_bad_lengths() -> None:
    with pytest.raises(InvalidInput, match="record length"):
        tf.parse_pax(b"99 path=x\n")
    with pytest.raises(InvalidInput, match="without '='"):
        tf.parse_pax(b"9 pathx\n\n"[:9])


def test_numbers_octal_and_base256() -> None:
    assert tf.parse_number(b"0000644\x00", "mode") == 0o644
    assert tf.parse_number(b"   644 \x00", "mode") == 0o644
    assert tf.parse_number(b"\x00" * 8, "mode") == 0
    assert tf.parse_number(b"\x80" + (2**40).to_bytes(11, "big"), "size") == 2**40
    assert tf.parse_number(b"\xff" * 12, "mtime") == -1
    with pytest.raises(InvalidInput, match="not a number"):
        tf.parse_number(b"12z\x00", "uid")


def test_ustar_split_and_header_checksum() -> None:
    assert tf.split_ustar_name(b"a" * 100) == (b"", b"a" * 100)
    name = b"p" * 150 + b"/" + b"n" * 100
    assert tf.split_ustar_name(name) == (b"p" * 150, b"n" * 100)
    assert tf.split_ustar_name(b"p" * 150 + b"/" + b"n" * 101) is None
    assert tf.split_ustar_name(b"x" * 200) is None
    header = tf.ustar_header(b"n", 0o644, 1, 2, 3, 4, b"0", prefix=b"p")
    assert len(header) == 512 and tf.header_checksum_ok(header)
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert (info.name, info.mode, info.uid, info.gid, info.size, info.mtime) == (
        "p/n",
        0o644,
        1,
        2,
        3,
        4,
    )


def test_pax_times_are_floored_to_seconds() -> None:
    assert tf.parse_pax_time(b"1700000000.999") == 1_700_000_000
    assert tf.parse_pax_time(b"-1.5") == -2
    assert tf.parse_pax_time(b"12") == 12


def test_clean_name_and_sort_key() -> None:
    assert clean_name("/usr//bin/./ls") == ["usr", "bin", "ls"]
    assert clean_name("a/b/../c") == ["a", "c"]
    assert clean_name("./") == []
    with pytest.raises(UnsafeArchive):
        clean_name("a/../../b")
    names = ["a-b", "a/b", "a", "B", "a/.wh.x", "é"]
    assert sorted(names, key=sort_key) == ["B", "a", "a/.wh.x", "a/b", "a-b", "é"]


def test_reader_handles_pax_globals_libarchive_xattrs_and_old_style_dirs(
    tmp_path: Path,
) -> None:
    raw = make_tar(
        [
            member("f", data=b"x", pax={"LIBARCHIVE.xattr.user.lib%20a": "dmFsdWU"}),
            member("olddir/", tarfile.AREGTYPE),
            member("g", data=b"y", pax={"SCHILY.xattr.user.s": "v", "mtime": "1.75"}),
        ]
    )
    entries = {e.name: e for e in iter_tar_entries(io.BytesIO(raw))}
    assert entries["f"].xattrs == {"user.lib a": b"value"}
    assert entries["olddir/"].type == tf.DIR
    assert entries["g"].xattrs == {"user.s": b"v"} and entries["g"].mtime == 1
    out = tmp_path / "out"
    apply_bytes(raw, out)
    assert (out / "olddir").is_dir()


def test_entry_beyond_a_single_zero_block_is_ignored_like_gnu_tar(tmp_path: Path) -> None:
    raw = make_tar([member("a", data=b"1")])
    # Something after the end-of-archive marker is not an entry (and is hashed).
    raw += make_tar([member("b", data=b"2")])
    assert [e.name for e in iter_tar_entries(io.BytesIO(raw))] == ["a"]
