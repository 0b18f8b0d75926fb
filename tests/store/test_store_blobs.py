"""BlobStore: commit protocol, idempotence, integrity on write and read, ingest sweep."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from store_helpers import blob_names, ingest_names

from lamina.digest import Digest
from lamina.errors import IntegrityError, NotFound
from lamina.store import BlobStore, Store

PAYLOAD = b"layer bytes\n" * 1000
PAYLOAD_HEX = hashlib.sha256(PAYLOAD).hexdigest()


def test_writer_commit_returns_sha256_and_stores_file(store: Store) -> None:
    with store.blobs.writer() as w:
        w.write(PAYLOAD[:5000])
        w.write(PAYLOAD[5000:])
        assert w.count == len(PAYLOAD)
        digest = w.commit()
    assert digest == Digest("sha256", PAYLOAD_HEX)
    path = store.root / "blobs" / "sha256" / PAYLOAD_HEX
    assert path.read_bytes() == PAYLOAD
    assert store.blobs.has(digest)
    assert store.blobs.size(digest) == len(PAYLOAD)
    assert store.blobs.read_bytes(digest, len(PAYLOAD)) == PAYLOAD
    assert ingest_names(store) == []


def test_put_bytes_returns_sha256(store: Store) -> None:
    assert str(store.blobs.put_bytes(b"hello")) == (
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")


def test_committing_same_bytes_twice_stores_one_file(store: Store) -> None:
    first = store.blobs.put_bytes(PAYLOAD)
    # The second time through a writer with the expected digest: a full ingest + rename.
    with store.blobs.writer() as w:
        w.write(PAYLOAD)
        second = w.commit(first, len(PAYLOAD))
    third = store.blobs.put_bytes(PAYLOAD, first)
    assert first == second == third
    assert blob_names(store) == {str(first)}
    assert list(store.blobs.list()) == [first]
    assert ingest_names(store) == []


def test_wrong_expected_digest_leaves_nothing(store: Store) -> None:
    wrong = Digest.from_bytes(b"something else")
    with store.blobs.writer() as w:
        w.write(PAYLOAD)
        with pytest.raises(IntegrityError, match="content has digest sha256:" + PAYLOAD_HEX):
            w.commit(wrong)
    assert blob_names(store) == set()
    assert ingest_names(store) == []
    assert not store.blobs.has(wrong)


def test_wrong_expected_size_leaves_nothing(store: Store) -> None:
    good = Digest("sha256", PAYLOAD_HEX)
    with (pytest.raises(IntegrityError, match=f"got {len(PAYLOAD)} bytes, expected 10"),
          store.blobs.writer() as w):
        w.write(PAYLOAD)
        w.commit(good, 10)
    assert blob_names(store) == set()
    assert ingest_names(store) == []


def test_put_bytes_with_wrong_digest_leaves_nothing(store: Store) -> None:
    with pytest.raises(IntegrityError):
        store.blobs.put_bytes(PAYLOAD, Digest.from_bytes(b"other"))
    assert blob_names(store) == set()
    assert ingest_names(store) == []


def test_exception_inside_writer_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="source went away"), store.blobs.writer() as w:
        w.write(PAYLOAD)
        assert w.path.exists()
        raise RuntimeError("source went away")
    assert not w.path.exists()
    assert blob_names(store) == set()
    assert ingest_names(store) == []


def test_leaving_writer_without_commit_leaves_nothing(store: Store) -> None:
    with store.blobs.writer() as w:
        w.write(PAYLOAD)
    assert blob_names(store) == set()
    assert ingest_names(store) == []


def test_missing_blob_is_not_found(store: Store) -> None:
    d = Digest.from_bytes(b"absent")
    assert not store.blobs.has(d)
    with pytest.raises(NotFound, match=f"blob {d} not in the store"):
        store.blobs.read_bytes(d)
    with pytest.raises(NotFound):
        store.blobs.size(d)
    assert store.blobs.delete(d) is False


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def test_corrupted_blob_fails_read_bytes(store: Store) -> None:
    d = store.blobs.put_bytes(PAYLOAD)
    _corrupt(store.blobs.path(d))
    with pytest.raises(IntegrityError, match=f"stored blob {d}: content has digest"):
        store.blobs.read_bytes(d)


def test_truncated_blob_fails_with_size(store: Store) -> None:
    d = store.blobs.put_bytes(PAYLOAD)
    p = store.blobs.path(d)
    p.write_bytes(PAYLOAD[:-1])
    with pytest.raises(IntegrityError, match=f"got {len(PAYLOAD) - 1} bytes, expected "
                                             f"{len(PAYLOAD)}"):
        store.blobs.read_bytes(d, len(PAYLOAD))


def test_corrupted_blob_fails_verify_after_partial_read(store: Store) -> None:
    d = store.blobs.put_bytes(PAYLOAD)
    _corrupt(store.blobs.path(d))
    with store.blobs.open(d) as r:
        assert len(r.read(100)) == 100  # a consumer that stops early sees nothing yet
        with pytest.raises(IntegrityError, match="corrupt or wrong blob"):
            r.verify()


def test_intact_blob_verifies(store: Store) -> None:
    d = store.blobs.put_bytes(PAYLOAD)
    with store.blobs.open(d, len(PAYLOAD)) as r:
        r.read(7)
        r.verify()
        assert r.count == len(PAYLOAD)


def test_list_ignores_stray_files(store: Store) -> None:
    d = store.blobs.put_bytes(b"a")
    (store.root / "blobs" / "sha256" / "not-a-digest").write_bytes(b"x")
    assert list(store.blobs.list()) == [d]


# -- ingest sweep ------------------------------------------------------------------------
_DEAD_WRITER = """
import os, sys
from pathlib import Path
from lamina.store import BlobStore
w = BlobStore(Path(sys.argv[1])).writer()
w.write(b"half a blob")
w.flush()
print(w.path.name, flush=True)
os._exit(0)  # die holding an ingest file: no abort, no commit
"""

_LIVE_WRITER = """
import sys
from pathlib import Path
from lamina.store import BlobStore
with BlobStore(Path(sys.argv[1])).writer() as w:
    w.write(b"still writing")
    w.flush()
    print(w.path.name, flush=True)
    sys.stdin.readline()
    print(w.commit(), flush=True)
"""


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sweep_ingest_removes_abandoned_but_not_live(store: Store) -> None:
    root = str(store.root)
    dead = subprocess.run([sys.executable, "-c", _DEAD_WRITER, root], capture_output=True,
                          text=True, check=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, root], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdin is not None
        live_name = live.stdout.readline().strip()
        in_process = store.blobs.writer()
        in_process.write(b"mine")
        ingest = store.root / "ingest"
        assert sorted(ingest_names(store)) == sorted([dead, live_name, in_process.path.name])
        for name in (dead, live_name, in_process.path.name):
            _age(ingest / name, 3600)

        assert store.blobs.sweep_ingest()[0] == 1
        assert sorted(ingest_names(store)) == sorted([live_name, in_process.path.name])

        # Both live writers can still finish.
        live.stdin.write("\n")
        live.stdin.flush()
        out, _ = live.communicate(timeout=30)
        assert live.returncode == 0
        assert out.strip() == str(Digest.from_bytes(b"still writing"))
        assert in_process.commit() == Digest.from_bytes(b"mine")
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert ingest_names(store) == []
    assert blob_names(store) == {str(Digest.from_bytes(b"still writing")),
                                 str(Digest.from_bytes(b"mine"))}


def test_sweep_ingest_leaves_young_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    stray = blobs.ingest_dir / "sha256-0000000000000000"
    stray.write_bytes(b"just created, not yet locked")
    assert blobs.sweep_ingest()[0] == 0
    assert stray.exists()
    _age(stray, 120)
    assert blobs.sweep_ingest()[0] == 1
    assert not stray.exists()


class _Trickle:
    """A readinto source handing out its bytes in uneven pieces, like a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.sizes = [1, 4095, 65536, 300_001, 1 << 20]

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self.sizes[self.pos % len(self.sizes)], len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:   # the protocol's other half; fill_from prefers readinto
        raise AssertionError("fill_from should use readinto")


@pytest.mark.parametrize("size", [0, 17, 1 << 20, 3 * (1 << 20) + 12345])
def test_fill_from_writes_every_byte_direct_or_not(store: Store, size: int) -> None:
    """fill_from: whole 1 MiB blocks written O_DIRECT on this ext4, the tail buffered;
    the blob is byte-identical, hashed where it landed, and O_DIRECT is off again."""
    import fcntl

    data = os.urandom(size)
    progress: list[int] = []
    with store.blobs.writer() as w:
        w.fill_from(_Trickle(data), progress.append)  # type: ignore[arg-type]
        flags = fcntl.fcntl(w._file.fileno(), fcntl.F_GETFL)
        assert not flags & os.O_DIRECT
        digest = w.commit(size=size)
    assert digest == Digest.from_bytes(data)
    assert store.blobs.read_bytes(digest) == data
    assert (progress[-1] if progress else 0) == size


def test_direct_io_is_on_for_the_store_file_system(store: Store) -> None:
    """The store under test lives on ext4, which takes O_DIRECT: the fast path is the one
    exercised (tmpfs and FUSE fall back; see the full-disk pull test)."""
    from lamina.store.blobs import _set_direct

    fs = subprocess.run(["stat", "-f", "-c", "%T", str(store.root)], capture_output=True,
                        text=True, check=True).stdout.strip()
    if fs not in ("ext2/ext3", "ext4", "xfs", "btrfs"):
        pytest.skip(f"the store is on {fs}, which may not take O_DIRECT")
    with store.blobs.writer() as w:
        assert _set_direct(w._file.fileno(), True)
        assert _set_direct(w._file.fileno(), False) is False


def test_interrupted_fill_never_writes_into_a_reused_descriptor(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while fill_from waits for its writer thread: the writer (with writes still
    queued on a slow disk) has a descriptor of its own, so closing the ingest file and
    opening another, which may get the same number, cannot let those writes land there."""
    import threading
    import types

    import lamina.store.blobs as blobs_mod

    real_write, real_join = os.write, threading.Thread.join

    def slow_write(fd: int, data: Any) -> int:
        time.sleep(0.1)
        return real_write(fd, data)

    def interrupted_join(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        if self.name == "lamina-ingest":
            raise KeyboardInterrupt
        real_join(self, *args, **kwargs)

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os)
                                       if not k.startswith("__")})
    fake_os.write = slow_write
    monkeypatch.setattr(blobs_mod, "os", fake_os)
    monkeypatch.setattr(threading.Thread, "join", interrupted_join)
    w = store.blobs.writer()
    with pytest.raises(KeyboardInterrupt):
        w.fill_from(_Trickle(os.urandom(3 * (1 << 20) + 5)))  # type: ignore[arg-type]
    w.abort()
    other = store.root / "unrelated"
    with open(other, "wb"):
        time.sleep(0.6)   # the queued writes finish meanwhile
    assert other.stat().st_size == 0
    assert not list(store.blobs.ingest_dir.iterdir())


def test_direct_writes_refused_with_einval_fall_back_to_buffered(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system may accept O_DIRECT on the descriptor and then refuse the writes
    (EINVAL): the blob is written buffered instead, whole and correct."""
    import errno
    import fcntl
    import types

    import lamina.store.blobs as blobs_mod

    refused: list[int] = []

    def picky_write(fd: int, data: Any) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return os.write(fd, data)

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os)
                                       if not k.startswith("__")})
    fake_os.write = picky_write
    monkeypatch.setattr(blobs_mod, "os", fake_os)
    data = os.urandom(3 * (1 << 20) + 99)
    with store.blobs.writer() as w:
        w.fill_from(_Trickle(data))  # type: ignore[arg-type]
        digest = w.commit(size=len(data))
    assert store.blobs.read_bytes(digest) == data
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(store.root)], capture_output=True,
                        text=True, check=True).stdout.strip()
    if fs in ("ext2/ext3", "ext4", "xfs", "btrfs"):
        assert refused == [1 << 20]   # tried once, then buffered for the rest
