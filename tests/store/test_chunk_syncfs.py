"""New chunks are made durable one syncfs per batch, not an fsync each (issue 11: a
chunked layer has a frame per file); where syncfs fails, each is fsynced as before.
Either way every chunk is named only after its bytes are on disk."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from lamina.digest import Digest
from lamina.store import Store
from lamina.store import chunks as chunk_store


def _blob(tmp_path: Path) -> tuple[Path, Digest, list[tuple[int, int]]]:
    data = random.Random(3).randbytes(300 * 1000)
    src = tmp_path / "blob"
    src.write_bytes(data)
    return src, Digest.from_bytes(data), [(o, 1000) for o in range(0, len(data), 1000)]


@pytest.mark.parametrize("works", [True, False])
def test_chunks_are_synced_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     works: bool) -> None:
    calls: list[int] = []
    fsyncs: list[int] = []
    renamed: list[int] = []   # synced calls seen when each chunk was named

    def syncfs(fd: int) -> int:
        calls.append(fd)
        return 0 if works else -1

    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(chunk_store, "_SYNCFS", [syncfs])
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])

    def replace(a: str | Path, b: str | Path) -> None:
        if "/chunks/" in str(b):
            renamed.append(len(calls) if works else len(fsyncs))
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    src, digest, spans = _blob(tmp_path)
    with Store(tmp_path / "store") as store:
        store.blobs.put_chunked(digest, src, spans)
        assert store.blobs.read_bytes(digest) == src.read_bytes()
    assert len(calls) == 3                 # 300 chunks, batches of 128
    assert len(renamed) == 300 and all(n > 0 for n in renamed)
    if works:
        assert renamed[:128] == [1] * 128 and renamed[-1] == 3
    else:
        assert len(fsyncs) >= 300           # the fallback: each chunk fsynced
