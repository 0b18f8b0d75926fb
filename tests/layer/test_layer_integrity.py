"""Damaged layers become clear lamina errors: digests, truncation, corruption."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from layer_helpers import apply_bytes, digest_of, layer_bytes, make_tar, member

from lamina.digest import Digest, VerifyingReader
from lamina.errors import IntegrityError, InvalidInput, LaminaError, Unsupported
from lamina.layer import (
    LayerOptions,
    apply_layer,
    diff_trees,
    iter_tar_entries,
    open_tar_stream,
)
from lamina.store.rmtree import remove_tree


def sample(tmp_path: Path, compression: str = "gzip") -> tuple[bytes, Digest]:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(40):
        (root / f"f{i}").write_bytes(bytes([i]) * 50_000 + str(i).encode() * 3000)
    data, info = layer_bytes(diff_trees(None, root), LayerOptions(compression=compression))  # type: ignore[arg-type]
    return data, info.diff_id


def test_diff_id_mismatch_raises_integrity_error(tmp_path: Path) -> None:
    data, diff_id = sample(tmp_path)
    wrong = Digest.from_bytes(b"something else")
    with pytest.raises(IntegrityError, match=f"expected {wrong}"):
        apply_bytes(data, tmp_path / "out", expected_diff_id=wrong)
    assert apply_bytes(data, tmp_path / "ok", expected_diff_id=diff_id).diff_id == diff_id


def test_compressed_digest_checked_by_a_verifying_reader_surfaces(tmp_path: Path) -> None:
    """The store hands apply_layer a VerifyingReader over the blob: apply reads the
    compressed stream to its end, so a wrong blob digest is raised, not missed."""
    data, diff_id = sample(tmp_path)
    wrong_blob = VerifyingReader(io.BytesIO(data), Digest.from_bytes(b"not it"), len(data))
    with pytest.raises(IntegrityError, match="corrupt or wrong blob"):
        apply_layer(wrong_blob, tmp_path / "out", diff_id)
    good = VerifyingReader(io.BytesIO(data), Digest.from_bytes(data), len(data))
    assert apply_layer(good, tmp_path / "ok", diff_id).diff_id == diff_id
    assert good.count == len(data)


def test_diff_id_covers_the_whole_stream_including_trailing_padding(tmp_path: Path) -> None:
    # GNU-style record padding after the end-of-archive blocks is part of the tar
    # whose digest is the diff_id.
    raw = make_tar([member("f", data=b"x")]) + bytes(10240)
    result = apply_bytes(raw, tmp_path / "out", expected_diff_id=Digest.parse(digest_of(raw)))
    assert result.uncompressed_size == len(raw)
    assert result.entries == 1


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_layer_is_an_integrity_error(tmp_path: Path, compression: str) -> None:
    data, _ = sample(tmp_path, compression)
    with pytest.raises(IntegrityError, match=f"layer {compression} stream is (truncated|corrupt)"):
        apply_bytes(data[: len(data) // 2], tmp_path / "out")


def test_gzip_cut_just_before_its_trailer_is_truncated(tmp_path: Path) -> None:
    data, _ = sample(tmp_path)
    with pytest.raises(IntegrityError, match="truncated"):
        apply_bytes(data[:-4], tmp_path / "out")


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_compressed_layer_is_an_integrity_error(tmp_path: Path, compression: str) -> None:
    data = bytearray(sample(tmp_path, compression)[0])
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x55
    with pytest.raises(IntegrityError, match=f"layer {compression} stream is"):
        apply_bytes(bytes(data), tmp_path / "out")


def test_gzip_crc_mismatch_is_caught(tmp_path: Path) -> None:
    data = bytearray(sample(tmp_path)[0])
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    with pytest.raises(IntegrityError, match="corrupt"):
        apply_bytes(bytes(data), tmp_path / "out")


def test_not_a_tar_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a tar archive"):
        apply_bytes(b"hello world, this is not a tar" * 40, tmp_path / "out")


def test_truncated_plain_tar_is_invalid_input(tmp_path: Path) -> None:
    data, _ = sample(tmp_path, "none")
    with pytest.raises(InvalidInput, match="truncated"):
        apply_bytes(data[:70_000], tmp_path / "out")


def test_malformed_tar_with_known_diff_id_is_an_integrity_error(tmp_path: Path) -> None:
    raw = b"garbage!" * 200
    with pytest.raises(IntegrityError, match="is not a valid tar"):
        apply_bytes(raw, tmp_path / "out", expected_diff_id=Digest.from_bytes(b"other"))


def test_corrupt_header_checksum_is_reported_with_offset(tmp_path: Path) -> None:
    raw = bytearray(make_tar([member("a", data=b"1"), member("b", data=b"2")]))
    raw[1024 + 10] ^= 0x01  # inside the second header (after a's header + data block)
    with pytest.raises(InvalidInput, match="corrupt tar header at offset 1024"):
        apply_bytes(bytes(raw), tmp_path / "out")


def test_errors_from_open_tar_stream_are_lamina_errors(tmp_path: Path) -> None:
    data, _ = sample(tmp_path)
    with open_tar_stream(io.BytesIO(data[:-100])) as f, pytest.raises(LaminaError):
        while f.read(65536):
            pass


def test_unreadable_or_vanishing_files_name_the_path(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "gone").write_text("x")
    cs = diff_trees(None, root)
    (root / "gone").unlink()
    with pytest.raises(InvalidInput, match=r"cannot add .*/src/gone to a layer"):
        layer_bytes(cs)


def test_filesystem_errors_while_applying_name_the_entry(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    # A name within PATH_MAX that the target's own path pushes past it: a real OSError
    # from the kernel, named by its entry (cut short in the message).
    name = "a/" * 2040 + "f"
    data = make_tar([member(name, data=b"1")])
    try:
        with pytest.raises(LaminaError, match=r"cannot extract 'a/a/.*\.\.\. \(4081 bytes\) "
                                              r"into .*File name too long") as err:
            apply_bytes(data, target)
    finally:
        remove_tree(target / "a")  # ~2000 levels: pytest's cleanup would recurse
    assert len(str(err.value)) < 300
    # A component longer than NAME_MAX (255) is refused before anything is made.
    with pytest.raises(InvalidInput, match="component of 300 bytes; at most 255"):
        apply_bytes(make_tar([member("d/" + "x" * 300, data=b"1")]), target)
    assert not (target / "d").exists()


def test_gnu_sparse_files_are_unsupported(tmp_path: Path) -> None:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    raw = bytearray(make_tar([(info, b"")], fmt=tarfile.GNU_FORMAT))
    with pytest.raises(Unsupported, match="sparse"):
        apply_bytes(bytes(raw), tmp_path / "out")


def test_iter_tar_entries_reads_headers(tmp_path: Path) -> None:
    data, _ = sample(tmp_path, "zstd")
    entries = list(iter_tar_entries(io.BytesIO(data)))
    assert [e.name for e in entries][:3] == ["f0", "f1", "f10"]
    sizes = {e.name: e.size for e in entries}
    assert sizes["f3"] == 53_000 and sizes["f12"] == 56_000
    assert {e.type for e in entries} == {"0"}
    assert len(entries) == 40
