"""Edges where lamina follows what peers accept, and SOURCE_DATE_EPOCH-aware change rules."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lamina.errors import InvalidInput
from lamina.layer import apply_layer, diff_trees


def _tar_without_trailer(files: dict[str, bytes]) -> bytes:
    """What umoci 0.4 ``insert`` writes: entries, but no padding after the last file's
    data and no end-of-archive blocks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    last = list(files.values())[-1]
    # cut after the last data byte: 512-byte header + data of each file
    end = sum(512 + ((len(d) + 511) // 512) * 512 for d in list(files.values())[:-1])
    end += 512 + len(last)
    return raw[:end]


def test_layer_ending_inside_padding_is_accepted(tmp_path: Path) -> None:
    raw = _tar_without_trailer({"a.txt": b"first\n", "opt/f": b"hi\n"})
    assert len(raw) % 512 == 3
    applied = apply_layer(io.BytesIO(raw), tmp_path / "root")
    assert (tmp_path / "root" / "opt" / "f").read_bytes() == b"hi\n"
    assert (tmp_path / "root" / "a.txt").read_bytes() == b"first\n"
    assert applied.entries == 2


def test_layer_ending_inside_file_data_is_refused(tmp_path: Path) -> None:
    raw = _tar_without_trailer({"opt/f": b"hello world\n"})[:-4]
    with pytest.raises(InvalidInput, match="truncated in file data"):
        apply_layer(io.BytesIO(raw), tmp_path / "root")


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for root in (lower, upper):
        root.mkdir()
    for root in (lower, upper):
        (root / "same.txt").write_text("same\n")
        (root / "edited.txt").write_text("AAAA\n")
    (upper / "edited.txt").write_text("BBBB\n")  # same size, other bytes
    os.utime(lower / "same.txt", ns=(1_800_000_000_000_000_000, 1_800_000_000_000_000_000))
    os.utime(upper / "same.txt", ns=(1_900_000_000_000_000_000, 1_900_000_000_000_000_000))
    os.utime(lower / "edited.txt", ns=(1_800_000_000_000_000_000, 1_800_000_000_000_000_000))
    os.utime(upper / "edited.txt", ns=(1_900_000_000_000_000_000, 1_900_000_000_000_000_000))
    return lower, upper


def test_touched_identical_file_is_no_change_under_epoch(tmp_path: Path) -> None:
    lower, upper = _pair(tmp_path)
    # both mtimes are after the epoch: the layer would write the same header
    cs = diff_trees(lower, upper, source_date_epoch=1_700_000_000)
    assert cs.modified == ["edited.txt"]
    # without an epoch the new mtime is itself a change, as Docker sees it
    cs = diff_trees(lower, upper)
    assert sorted(cs.modified) == ["edited.txt", "same.txt"]


def test_mtime_change_below_epoch_is_a_change(tmp_path: Path) -> None:
    lower, upper = _pair(tmp_path)
    # the epoch is after both times: each keeps its own mtime in the tar
    cs = diff_trees(lower, upper, source_date_epoch=2_000_000_000)
    assert sorted(cs.modified) == ["edited.txt", "same.txt"]
