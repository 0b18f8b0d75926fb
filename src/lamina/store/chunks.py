"""Blobs kept as chunks: each chunk once, named by the sha256 of its bytes, plus a recipe.

A chunked layer (zstd:chunked) is a run of frames; two layers that hold the same file hold
the same frame bytes.  Stored as its frames, a blob costs only the frames the store did
not have (casync/desync keep a chunk store plus one index per blob the same way; unlike
containers/storage, lamina keeps the exact frames, so the blob keeps its digest and
every reader still gets its original bytes).  Layout, beside ``blobs/``::

    chunks/sha256/<hex>     one chunk: the bytes of one span of some blob
    chunks/lock             flock: writers shared, gc's chunk sweep exclusive
    recipes/sha256/<hex>    the blob <hex>: its size and its chunks in order (JSON)

The store never parses layers: the caller says where the blob splits (``spans``, the
byte ranges at frame boundaries, from ``layer/``).  Crash safety, in order:

1. the whole blob was verified (a ``BlobWriter.finish``, or hashed here while chunking:
   ``publish`` of an unverified file, a ``ChunkSink``);
2. each chunk is written to ``ingest/`` under an flock, fsynced, renamed into
   ``chunks/``, the directory fsynced; a chunk already there is not written again;
3. only then the recipe, the same way: a recipe never names a chunk not on disk;
4. then the whole-blob file (the ingest file, or a blob being converted) goes.

Killed between 2 and 3, the new chunks belong to no recipe: gc removes them as it
removes the ingest files of dead writers.  Steps 2-3 run under a *shared* flock of
``chunks/lock`` and gc's chunk sweep under an *exclusive* one, so gc never takes a chunk
a writer has just found present (or just renamed) before its recipe names it.  Nothing
here touches the metadata while holding that lock (gc holds the metadata's write lock
while it waits for it).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import fcntl
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lamina.digest import CHUNK, Digest, VerifyingReader
from lamina.errors import IntegrityError, InvalidInput, NotFound
from lamina.store.files import disk_error, fsync_dir

RECIPE_FORMAT = "lamina-recipe-v1"
MAX_RECIPE_BYTES = 64 << 20   # a recipe is ~80 bytes a chunk: a million chunks fit
_IN_MEMORY = 4 << 20          # spans up to this are read once; longer ones hashed first
_BATCH = 128                  # temp chunk files open at once (one descriptor each)
_FSYNC_THREADS = 4            # parallel fsyncs: the file system batches their journal


@dataclass(frozen=True)
class Recipe:
    """A blob as its chunks, in order: ``(chunk digest, length)``."""

    blob: Digest
    size: int
    chunks: tuple[tuple[Digest, int], ...]

    def encode(self) -> bytes:
        return json.dumps({"format": RECIPE_FORMAT, "blob": str(self.blob), "size": self.size,
                           "chunks": [[str(d), n] for d, n in self.chunks]},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, blob: Digest) -> Recipe:
        """Parse and check a recipe (its lengths must add up to its size)."""
        try:
            doc: Any = json.loads(raw)
            if doc.get("format") != RECIPE_FORMAT or doc.get("blob") != str(blob):
                raise ValueError("not a recipe of this blob")
            chunks = tuple((Digest.parse(d), int(n)) for d, n in doc["chunks"])
            size = int(doc["size"])
        except Exception:  # noqa: BLE001 - any damage is one error
            raise IntegrityError(f"blob {blob}: its recipe is damaged "
                                 "(run `lamina fsck --repair`)") from None
        if sum(n for _, n in chunks) != size or any(n <= 0 for _, n in chunks):
            raise IntegrityError(f"blob {blob}: its recipe's chunks do not add up to "
                                 f"{size} bytes (run `lamina fsck --repair`)")
        return cls(blob, size, chunks)


def check_spans(spans: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """``spans`` as (offset, length) that cover ``[0, size)`` exactly once, in order,
    none empty; else InvalidInput (a caller's TOC that lies must not become a recipe)."""
    out: list[tuple[int, int]] = []
    at = 0
    for span in spans:
        offset, length = int(span[0]), int(span[1])
        if offset != at or length <= 0:
            raise InvalidInput(f"chunk spans must cover the blob in order without gaps or "
                               f"empty spans: ({offset}, {length}) where {at} was next")
        out.append((offset, length))
        at += length
    if at != size:
        raise InvalidInput(f"chunk spans cover {at} bytes of a {size}-byte blob")
    return out


_SYNCFS: list[Callable[[int], int] | None] = []   # looked up on first use


def _syncfs(fd: int) -> bool:
    """Flush the file system holding ``fd`` (every file written on it) to disk; False
    where syncfs is not available or fails (the caller fsyncs each file instead)."""
    if not _SYNCFS:
        fn: Callable[[int], int] | None = None
        if sys.platform == "linux":
            with contextlib.suppress(OSError, AttributeError):
                fn = ctypes.CDLL(None, use_errno=True).syncfs   # libc's, in the process
        _SYNCFS.append(fn)
    fn = _SYNCFS[0]
    return fn is not None and fn(fd) == 0


def _pread_full(fd: int, n: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        data = os.pread(fd, min(n, CHUNK << 2), offset)
        if not data:
            raise IntegrityError("the source of a chunked blob ended early")
        parts.append(data)
        n -= len(data)
        offset += len(data)
    return b"".join(parts)


class _Temp:
    """A chunk (or recipe) being written: ``ingest/chunk-<random>``, locked like any
    ingest file (gc removes it once its writer is gone)."""

    def __init__(self, ingest: Path, digest: Digest, kind: str = "chunk") -> None:
        self.digest = digest
        self.path = ingest / f"{kind}-{os.urandom(8).hex()}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.open = True
        self.named = False
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        if self.open:
            self.open = False
            os.close(self.fd)

    def rename(self, final: Path) -> None:
        os.replace(self.path, final)
        self.named = True
        self.close()

    def drop(self) -> None:
        """Close and remove, unless it was renamed into place."""
        with contextlib.suppress(OSError):
            self.close()
        if not self.named:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class ChunkStore:
    """The chunk and recipe areas of a store (used through ``BlobStore``)."""

    def __init__(self, root: Path, ingest_dir: Path) -> None:
        self.chunk_dir = root / "chunks"
        self.recipe_dir = root / "recipes"
        self.ingest_dir = ingest_dir
        self._chunk_root = str(self.chunk_dir)

    # -- names --------------------------------------------------------------------------
    def chunk_path(self, digest: Digest) -> Path:
        return self.chunk_dir / digest.algorithm / digest.encoded

    def recipe_path(self, blob: Digest) -> Path:
        return self.recipe_dir / blob.algorithm / blob.encoded

    def chunk_name(self, digest: Digest) -> str:
        """``chunk_path`` as a string, without pathlib's cost (a read opens thousands)."""
        return f"{self._chunk_root}/{digest.algorithm}/{digest.encoded}"

    def has_chunk(self, digest: Digest) -> bool:
        return self.chunk_path(digest).is_file()

    def has_recipe(self, blob: Digest) -> bool:
        return self.recipe_path(blob).is_file()

    def open_chunk(self, digest: Digest) -> VerifyingReader:
        """A chunk's bytes, checked against its name at end of stream."""
        try:
            f = open(self.chunk_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"chunk {digest} not in the store") from None
        return VerifyingReader(f, digest, os.fstat(f.fileno()).st_size, what="stored chunk",
                               at_rest=True)

    def read_recipe(self, blob: Digest) -> Recipe:
        """NotFound when ``blob`` is not kept as chunks."""
        try:
            with open(self.recipe_path(blob), "rb") as f:
                raw = f.read(MAX_RECIPE_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(f"blob {blob} not in the store") from None
        if len(raw) > MAX_RECIPE_BYTES:
            raise IntegrityError(f"blob {blob}: its recipe is over {MAX_RECIPE_BYTES} bytes")
        return Recipe.decode(raw, blob)

    @staticmethod
    def names(top: Path) -> Iterator[Digest]:
        if not top.is_dir():
            return
        for alg_dir in sorted(top.iterdir()):
            if not alg_dir.is_dir():
                continue
            for entry in sorted(os.scandir(alg_dir), key=lambda e: e.name):
                try:
                    yield Digest.parse(f"{alg_dir.name}:{entry.name}")
                except Exception:  # noqa: BLE001 - stray files are not chunks
                    continue

    def chunks(self) -> Iterator[Digest]:
        return self.names(self.chunk_dir)

    def recipes(self) -> Iterator[Digest]:
        return self.names(self.recipe_dir)

    def delete_recipe(self, blob: Digest) -> bool:
        try:
            self.recipe_path(blob).unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_chunk(self, digest: Digest) -> int:
        """Remove a chunk; its bytes (0 if it was not there)."""
        path = self.chunk_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    # -- the lock gc and writers share --------------------------------------------------
    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        fd = self.lock(exclusive)
        try:
            yield
        finally:
            os.close(fd)

    def lock(self, exclusive: bool) -> int:
        """Take ``chunks/lock``; the descriptor holds it until closed."""
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.chunk_dir / "lock",
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- writing ------------------------------------------------------------------------
    def publish(self, blob: Digest, source: BinaryIO, spans: Sequence[tuple[int, int]],
                verified: bool) -> Recipe:
        """Store ``source`` (a regular file holding the blob ``blob``) as chunks plus a
        recipe; idempotent.  ``verified``: the caller checked the whole digest already;
        else it is hashed here while chunking and nothing is named on a mismatch."""
        size = os.fstat(source.fileno()).st_size
        cut = check_spans(spans, size)
        with self.locked(exclusive=False):
            if self.has_recipe(blob):
                return self.read_recipe(blob)
            whole = None if verified else blob.hasher()
            entries = self._write_chunks(source.fileno(), cut, whole)
            if whole is not None and whole.hexdigest() != blob.encoded:
                # The chunks written stay unnamed by any recipe: gc's to remove (another
                # writer may already have found one of them and be about to name it).
                raise IntegrityError(f"blob {blob}: content has digest "
                                     f"{blob.algorithm}:{whole.hexdigest()} (corrupt or wrong "
                                     "blob); not stored as chunks")
            recipe = Recipe(blob, size, tuple(entries))
            self._write_recipe(recipe)
        return recipe

    def _write_chunks(self, fd: int, spans: list[tuple[int, int]],
                      whole: Any) -> list[tuple[Digest, int]]:
        entries: list[tuple[Digest, int]] = []
        batch: list[_Temp] = []
        seen: set[Digest] = set()
        (self.chunk_dir / "sha256").mkdir(parents=True, exist_ok=True)
        wrote = False
        try:
            for offset, length in spans:
                data = _pread_full(fd, length, offset) if length <= _IN_MEMORY else None
                digest = self._hash_span(fd, offset, length, data, whole)
                entries.append((digest, length))
                if digest in seen or self.has_chunk(digest):
                    seen.add(digest)
                    continue
                seen.add(digest)
                temp = _Temp(self.ingest_dir, digest)
                batch.append(temp)
                if data is not None:
                    temp.write(data)
                else:
                    self._copy_span(fd, temp, offset, length)
                if len(batch) >= _BATCH:
                    self._commit(batch)
                    batch, wrote = [], True
            if batch:
                self._commit(batch)
                batch, wrote = [], True
            if wrote:
                fsync_dir(self.chunk_dir / "sha256")
        except OSError as e:
            raise disk_error(e, "the chunks of a blob") from None
        finally:
            for temp in batch:
                temp.drop()
        return entries

    @staticmethod
    def _hash_span(fd: int, offset: int, length: int, data: bytes | None, whole: Any) -> Digest:
        h = hashlib.sha256()
        if data is not None:
            h.update(data)
            if whole is not None:
                whole.update(data)
            return Digest.from_hasher(h)
        end = offset + length
        while offset < end:
            piece = _pread_full(fd, min(CHUNK << 2, end - offset), offset)
            h.update(piece)
            if whole is not None:
                whole.update(piece)
            offset += len(piece)
        return Digest.from_hasher(h)

    @staticmethod
    def _copy_span(fd: int, temp: _Temp, offset: int, length: int) -> None:
        """A long span, copied in the kernel where it can (copy_file_range: no trip
        through Python, a reflink on file systems that share extents)."""
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(fd, temp.fd, length - done, offset + done)
            except OSError:
                n = 0
            if n <= 0:
                break
            done += n
        while done < length:
            temp.write(_pread_full(fd, min(CHUNK << 2, length - done), offset + done))
            done += min(CHUNK << 2, length - done)

    def _commit(self, batch: list[_Temp]) -> None:
        """Make a batch durable, then name each; a chunk another writer named meanwhile
        is the same bytes.  One ``syncfs(2)`` for the batch where there is one (Linux):
        a chunked layer has a frame per file, and an fsync each cost ~1.3 ms of a pull's
        time per frame here, one syncfs per 128 a tenth of that; else the fsyncs run in
        parallel (the journal commits them together)."""
        if not _syncfs(batch[0].fd):
            with ThreadPoolExecutor(min(_FSYNC_THREADS, len(batch))) as pool:
                list(pool.map(lambda t: os.fsync(t.fd), batch))
        for temp in batch:
            temp.rename(self.chunk_path(temp.digest))

    def _write_recipe(self, recipe: Recipe) -> None:
        final = self.recipe_path(recipe.blob)
        try:
            tmp = _Temp(self.ingest_dir, recipe.blob, "recipe")
        except OSError as e:
            raise disk_error(e, f"the recipe of blob {recipe.blob}") from None
        try:
            tmp.write(recipe.encode())
            os.fsync(tmp.fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(final)
            fsync_dir(final.parent)
        except OSError as e:
            raise disk_error(e, f"the recipe of blob {recipe.blob}") from None
        finally:
            tmp.drop()

    def users(self, recipes: Iterable[Digest]) -> tuple[dict[str, list[str]], list[str]]:
        """Chunk → the blobs (of ``recipes``) whose recipe names it; and the blobs whose
        recipe cannot be read."""
        used: dict[str, list[str]] = {}
        damaged: list[str] = []
        for blob in recipes:
            try:
                recipe = self.read_recipe(blob)
            except NotFound:
                continue
            except IntegrityError:
                damaged.append(str(blob))
                continue
            for chunk in dict.fromkeys(d for d, _ in recipe.chunks):
                used.setdefault(str(chunk), []).append(str(blob))
        return used, damaged


class ChunkSink:
    """A blob stored as chunks while it is assembled span by span, in order (a delta
    pull, transport/delta.py), with no whole copy written and read back: a span already
    stored is named (``stored``), a new one written once (``add``), and the whole blob
    hashed once on the way.  The order of ``publish`` above holds: the shared lock from
    the first chunk to the recipe, every chunk durable before ``finish`` checks the
    whole digest, and only then the recipe.  Killed or refused midway, the new chunks
    belong to no recipe: gc's, as above.  Touches no metadata (the lock is held)."""

    def __init__(self, chunks: ChunkStore, blob: Digest) -> None:
        self._chunks = chunks
        self.blob = blob
        self._whole = blob.hasher()
        self._entries: list[tuple[Digest, int]] = []
        self._batch: list[_Temp] = []
        self._seen: set[Digest] = set()
        self._wrote = False
        self.count = 0
        self._lock: int | None = chunks.lock(exclusive=False)
        (chunks.chunk_dir / "sha256").mkdir(parents=True, exist_ok=True)

    def stored(self, digest: Digest, length: int) -> None:
        """A span that is the stored chunk ``digest`` (leased by the caller): hashed
        into the whole digest, which checks it, never written again."""
        try:
            with open(self._chunks.chunk_name(digest), "rb") as f:
                data = f.read(length + 1)
        except FileNotFoundError:
            raise NotFound(f"chunk {digest} not in the store") from None
        if len(data) != length:
            raise InvalidInput(f"stored chunk {digest} is not {length} bytes")
        self._whole.update(data)
        self._seen.add(digest)
        self._entries.append((digest, length))
        self.count += length

    def add(self, data: bytes | memoryview) -> None:
        """A span of new bytes: written as a chunk unless one holds them already."""
        self._whole.update(data)
        self.count += len(data)
        digest = Digest.from_hasher(hashlib.sha256(data))
        self._entries.append((digest, len(data)))
        if digest in self._seen or self._chunks.has_chunk(digest):
            self._seen.add(digest)
            return
        self._seen.add(digest)
        try:
            temp = _Temp(self._chunks.ingest_dir, digest)
            self._batch.append(temp)
            temp.write(data)
            if len(self._batch) >= _BATCH:
                self._flush()
        except OSError as e:
            raise disk_error(e, "the chunks of a blob") from None

    def _flush(self) -> None:
        if self._batch:
            self._chunks._commit(self._batch)
            self._batch, self._wrote = [], True

    def finish(self, size: int) -> Recipe:
        """Make the chunks durable, check the whole blob's size and digest, then write
        its recipe and let go of the lock; IntegrityError (nothing named) on a mismatch."""
        try:
            try:
                self._flush()
                if self._wrote:
                    fsync_dir(self._chunks.chunk_dir / "sha256")
            except OSError as e:
                raise disk_error(e, "the chunks of a blob") from None
            got = Digest.from_hasher(self._whole)
            if self.count != size or got != self.blob:
                raise IntegrityError(f"blob {self.blob}: content has digest {got} and "
                                     f"{self.count} bytes, expected {size} (corrupt or "
                                     "wrong blob); not stored")
            recipe = Recipe(self.blob, size, tuple(self._entries))
            if not self._chunks.has_recipe(self.blob):
                self._chunks._write_recipe(recipe)
        finally:
            self.abort()
        return recipe

    def publish(self, spans: Sequence[tuple[int, int]] | None = None) -> Digest:
        """Nothing left to do after ``finish`` (the recipe is durable); the blob's
        digest (``BlobWriter.publish``'s signature, for ``transport/local``)."""
        return self.blob

    def abort(self) -> None:
        """Drop chunks not yet named and let go of the lock (idempotent)."""
        for temp in self._batch:
            temp.drop()
        self._batch = []
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


class ChunkedFile(io.RawIOBase):
    """A blob kept as chunks, read as one file: ``read``/``readinto``/``seek`` and
    ``pread`` at any offset give its original bytes.  Not a real file: no ``fileno``
    (a push cannot sendfile(2) it; the bytes stream instead).  Chunks are opened as the
    reads reach them, one descriptor at a time."""

    def __init__(self, chunks: ChunkStore, recipe: Recipe) -> None:
        super().__init__()
        self._chunks = chunks
        self.recipe = recipe
        self._starts: list[int] = []
        at = 0
        for _, n in recipe.chunks:
            self._starts.append(at)
            at += n
        self._pos = 0
        self._fd = -1
        self._fd_index = -1

    @property
    def size(self) -> int:
        return self.recipe.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.recipe.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1, /) -> bytes:
        left = self.recipe.size - self._pos
        n = left if size is None or size < 0 else min(size, left)
        if n <= 0:
            return b""
        buf = bytearray(n)
        got = self.readinto(buf)
        del buf[got:]
        return bytes(buf)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        n = self.pread_into(memoryview(buffer).cast("B"), self._pos)
        self._pos += n
        return n

    def pread(self, n: int, offset: int) -> bytes:
        buf = bytearray(max(0, min(n, self.recipe.size - offset)))
        got = self.pread_into(memoryview(buf), offset)
        return bytes(buf[:got])

    def pread_into(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from byte ``offset`` of the blob (less only at its end)."""
        filled = 0
        while filled < len(view) and offset < self.recipe.size:
            i = bisect.bisect_right(self._starts, offset) - 1
            digest, length = self.recipe.chunks[i]
            within = offset - self._starts[i]
            want = min(len(view) - filled, length - within)
            got = os.preadv(self._chunk_fd(i), [view[filled:filled + want]], within)
            if got <= 0:
                raise IntegrityError(f"blob {self.recipe.blob}: chunk {digest} is shorter "
                                     "than its recipe says (run `lamina fsck`)")
            filled += got
            offset += got
        return filled

    def _chunk_fd(self, i: int) -> int:
        if i != self._fd_index:
            self._close_fd()
            digest = self.recipe.chunks[i][0]
            try:
                self._fd = os.open(self._chunks.chunk_name(digest), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise IntegrityError(f"blob {self.recipe.blob}: chunk {digest} is missing from "
                                     "the store (run `lamina fsck`)") from None
            self._fd_index = i
        return self._fd

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._fd_index = -1, -1

    def close(self) -> None:
        self._close_fd()
        super().close()
