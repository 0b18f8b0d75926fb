"""Blobs by digest: ``blobs/<algorithm>/<encoded>``, written through the ingest area.

Commit protocol (containerd content.Writer.Commit): bytes go to ``ingest/<random>`` while
being hashed; on commit the size and digest are checked, the file is fsynced and renamed
into place, so a crash never leaves a half blob under a real name.  Committing a blob
that already exists is success and stores nothing twice.  An ingest file is held under
an ``fcntl`` lock while it is written; ``gc`` removes only ingest files whose lock it can
take, i.e. those abandoned by a dead writer.

Roles (containerd ``content``): ``BlobProvider`` reads, ``BlobIngester`` writes, and
``BlobStore`` adds management (list, delete).  Functions ask for the narrowest role.

A blob is kept either whole (``blobs/``) or as chunks plus a recipe (chunks.py, when its
writer is given the spans to cut it at): every method here answers for both alike, with
the blob's logical size and its original bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from lamina.digest import CHUNK, Digest, HashingWriter, VerifyingReader
from lamina.errors import IntegrityError, NotFound
from lamina.store import locks
from lamina.store.chunks import ChunkedFile, ChunkStore, Recipe
from lamina.store.files import disk_error, fsync_dir


@dataclass(frozen=True)
class BlobSpace:
    """What the blobs take: ``logical`` bytes (every blob at its size, as its readers see
    it) against ``physical`` bytes (the files: whole blobs, recipes, each chunk once)."""

    blobs: int
    chunked: int      # of them kept as chunks
    chunks: int
    logical: int
    physical: int
    pending: int = 0  # zstd:chunked layers kept whole until a delta pull shares them

    @property
    def ratio(self) -> float:
        """logical / physical: 1.0 without sharing below the blob, more with it."""
        return self.logical / self.physical if self.physical else 1.0

    def to_json(self) -> dict[str, int | float]:
        return {"blobs": self.blobs, "chunked_blobs": self.chunked, "chunks": self.chunks,
                "chunked_kept_whole": self.pending, "logical": self.logical,
                "physical": self.physical, "ratio": round(self.ratio, 3)}


class BlobProvider(Protocol):
    def has(self, digest: Digest) -> bool: ...
    def size(self, digest: Digest) -> int: ...
    def open(self, digest: Digest, size: int | None = None) -> VerifyingReader: ...
    def read_bytes(self, digest: Digest, size: int | None = None) -> bytes: ...


class BlobIngester(Protocol):
    def writer(self) -> BlobWriter: ...
    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest: ...


DIRECT_CHUNK = 1 << 20   # O_DIRECT writes: a multiple of any block size in use


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for ``fd``; whether it is now on (False where the file
    system refuses it, or the platform has no such flag)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return on


def _write_all(fd: int, data: memoryview, direct: bool) -> bool:
    """Write all of ``data``; returns whether O_DIRECT is still on (a short direct write
    leaves an unaligned rest, which is written buffered).  A file system that took the
    flag but refuses the write itself (EINVAL: alignment it wants larger, ext4 with
    data=journal, some network file systems) gets it buffered, and so does the rest."""
    try:
        done = os.write(fd, data)
    except OSError as e:
        if not direct or e.errno != errno.EINVAL:
            raise
        direct = _set_direct(fd, False)
        done = os.write(fd, data)
    while done < len(data):
        if direct:
            direct = _set_direct(fd, False)
        done += os.write(fd, data[done:])
    return direct


class _BlockWriter:
    """Writes filled buffers to ``fd`` in order, on a thread of its own, so that one
    buffer goes to disk while the other fills; O_DIRECT while whole blocks come.
    ``take`` a free buffer, fill it, ``give`` it back with its length (short = the
    last); ``close`` waits for every write and raises the first failure."""

    def __init__(self, fd: int, direct: bool = True) -> None:
        # A descriptor of its own (same open file, so O_DIRECT set on either holds for
        # both): if the filling thread is interrupted and the writer's file is closed
        # while writes are still queued, they cannot land in whatever file reuses the
        # number.  Closed by the thread when it ends.
        self.fd = os.dup(fd)
        self.direct = direct and _set_direct(self.fd, True)
        self.error: BaseException | None = None
        self._maps = [mmap.mmap(-1, DIRECT_CHUNK) for _ in range(2)]
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        for m in self._maps:
            self._free.put(memoryview(m))
        self._thread = threading.Thread(target=self._run, name="lamina-ingest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._write_queued()
        finally:
            os.close(self.fd)

    def _write_queued(self) -> None:
        while (item := self._work.get()) is not None:
            view, n = item
            if self.error is None:
                try:
                    if n == DIRECT_CHUNK:
                        self.direct = _write_all(self.fd, view, self.direct)
                    else:
                        if self.direct:
                            self.direct = _set_direct(self.fd, False)  # tail: not a block
                        _write_all(self.fd, view[:n], False)
                except BaseException as e:  # noqa: BLE001 - handed to the filling thread
                    self.error = e
            self._free.put(view)   # always: the filling thread may be waiting for it
        if self.direct:
            self.direct = _set_direct(self.fd, False)   # the file is shared with the writer

    def take(self) -> memoryview:
        view = self._free.get()
        if self.error is not None:
            self._free.put(view)
            self._raise()
        return view

    def give(self, view: memoryview, n: int) -> None:
        self._work.put((view, n))

    def _raise(self) -> None:
        assert self.error is not None
        if isinstance(self.error, OSError):
            raise disk_error(self.error, "a blob") from None
        raise self.error

    def close(self, raise_error: bool = True) -> None:
        self._work.put(None)
        self._thread.join()   # clears O_DIRECT itself on the tail; the fd is its to close
        while not self._free.empty():
            with contextlib.suppress(BufferError):
                self._free.get().release()
        for m in self._maps:
            # An exception raised through a read (say a digest mismatch) may still hold
            # slices of a buffer in its traceback: then it is freed with them.
            with contextlib.suppress(BufferError):
                m.close()
        if raise_error and self.error is not None:
            self._raise()


class BlobWriter:
    """One blob being written.  Use as a context manager: leaving without ``commit``
    (or with an exception) removes the ingest file.

    ``resume`` (with ``verified_by``): the ingest file is named for that blob, so what an
    interrupted download of it wrote is found by the next one (containerd resumes an
    ingest by its ref the same way): those bytes are kept, hashed into the reader, and
    the reader asked to go on after them (``VerifyingReader.start_at``).  ``keep``
    leaves them for the next writer; ``resumed`` says how many were taken over."""

    def __init__(self, blobs: BlobStore, algorithm: str = "sha256",
                 verified_by: VerifyingReader | None = None,
                 resume: Digest | None = None) -> None:
        self._blobs = blobs
        # A writer fed from a VerifyingReader need not hash the same bytes again: the
        # reader checks them, and commit() requires its verdict (CRAFT: no second pass).
        self._verified_by = verified_by
        self.resumable = resume is not None and verified_by is not None and \
            self._take_partial(blobs, resume)
        if not self.resumable:
            self.path = blobs.ingest_dir / f"{algorithm}-{os.urandom(8).hex()}"
            try:
                # Read-write: a blob published as chunks is read back from this file.
                self._file: BinaryIO = open(self.path, "x+b")
            except OSError as e:
                raise disk_error(e, "an ingest file") from None
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._hash = HashingWriter(self._file, algorithm, hash=verified_by is None)
        self._closed = False
        self._digest: Digest | None = None   # set by finish()
        self.recipe: Recipe | None = None   # set by publish(spans)
        self.resumed = self._take_over() if self.resumable else 0

    def _take_partial(self, blobs: BlobStore, digest: Digest) -> bool:
        """Open and lock ``partial-<algorithm>-<hex>``; False if a live writer holds it
        (then this one writes a private file, as ever)."""
        path = blobs.ingest_dir / f"partial-{digest.algorithm}-{digest.encoded}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise disk_error(e, "an ingest file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # gc may have taken the abandoned file between our open and our lock, and
            # removed it: then the name is no longer this file's
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise BlockingIOError
        except OSError:
            os.close(fd)
            return False
        self.path = path
        self._file = os.fdopen(fd, "r+b")
        return True

    def _take_over(self) -> int:
        """Keep the whole buffers an earlier writer left (``fill_from`` writes only
        those, at offsets O_DIRECT accepts) if the reader can start after them."""
        reader = self._verified_by
        assert reader is not None
        size = os.fstat(self._file.fileno()).st_size
        keep = size - size % DIRECT_CHUNK
        if keep:
            hashed = reader.expected.hasher()
            self._file.seek(0)
            left = keep
            while left and (chunk := self._file.read(min(CHUNK, left))):
                hashed.update(chunk)
                left -= len(chunk)
            if left or not reader.start_at(keep, hashed):
                keep = 0
        self._file.truncate(keep)
        self._file.seek(keep)
        self._hash.count = keep
        return keep

    @property
    def count(self) -> int:
        return self._hash.count

    @property
    def digest(self) -> Digest:
        """The digest of what was written so far (register it in a lease, then commit)."""
        return self._hash.digest

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._hash.write(data)
        except OSError as e:
            raise disk_error(e, "a blob") from None

    def flush(self) -> None:
        self._file.flush()

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes already written (a chunked layer's TOC, read back before ``publish``
        to learn where to cut it)."""
        self._file.flush()
        return os.pread(self._file.fileno(), length, offset)

    def copy_from(self, src: BinaryIO | VerifyingReader) -> None:
        while chunk := src.read(CHUNK):
            self.write(chunk)

    def fill_from(self, src: BinaryIO | VerifyingReader,
                  progress: Callable[[int], None] | None = None) -> None:
        """Write everything ``src`` yields, through two reused buffers, bypassing the
        page cache (``O_DIRECT``) where the file system allows it.

        Why: a blob is fsynced before it is named anyway, so its bytes must reach the
        disk now; copying them into the page cache first and writing them back at the
        fsync cost ~10% of a pull's CPU here (bench_registry).  Direct writes wait for
        the disk, so they run on a thread of their own (``_BlockWriter``) while the next
        buffer fills from ``src`` and is hashed where it landed: ~11% faster than
        writing in turn.  Direct I/O needs block-aligned memory, lengths and offsets:
        the buffers are mmaps (page-aligned), written whole (``DIRECT_CHUNK``) at
        offsets that are multiples of it; the tail is written after O_DIRECT is
        switched off.  File systems without direct I/O (tmpfs before Linux 6.6, some
        FUSE) refuse the flag and get the same loop, buffered.  ``progress`` gets the
        bytes taken in so far after each read."""
        readinto = getattr(src, "readinto", None)
        if readinto is None:
            while chunk := src.read(CHUNK):
                self.write(chunk)
                if progress is not None:
                    progress(self.count)
            return
        self._file.flush()
        writer = _BlockWriter(self._file.fileno())
        ok = False
        try:
            while True:
                view = writer.take()
                fill = 0
                while fill < DIRECT_CHUNK:
                    n = readinto(view[fill:])
                    if not n:
                        break
                    self._hash.account(view[fill:fill + n])
                    fill += n
                    if progress is not None:
                        progress(self.count)
                writer.give(view, fill)
                if fill < DIRECT_CHUNK:
                    break
            ok = True
        finally:
            writer.close(raise_error=ok)

    def commit(self, expected: Digest | None = None, size: int | None = None) -> Digest:
        """Check, fsync and rename into place; return the blob's digest."""
        digest = self.finish(expected, size)
        self.publish()
        return digest

    def finish(self, expected: Digest | None = None, size: int | None = None) -> Digest:
        """The checking half of ``commit``: the bytes are all there and are what
        ``expected`` names (else IntegrityError, and the ingest file is gone).  The blob
        is not visible until ``publish``; the caller may hand that to another thread,
        so the next download starts while this one's fsync runs."""
        if self._verified_by is not None:
            # The reader's own check, to the end of its stream, stands for ours.
            reader = self._verified_by
            if expected is None or reader.expected != expected:
                self.abort()
                raise IntegrityError("a verified write must commit the reader's digest")
            try:
                reader.verify()
            except BaseException:
                self.abort()
                raise
            digest = expected
        else:
            digest = self._hash.digest
        with self._or_abort(digest):
            if size is not None and self.count != size:
                raise IntegrityError(f"blob {expected or digest}: got {self.count} bytes, "
                                     f"expected {size}")
            if expected is not None and digest != expected:
                raise IntegrityError(f"blob {expected}: content has digest {digest} "
                                     "(corrupt or wrong blob)")
            self._file.flush()
        self._digest = digest
        return digest

    def publish(self, spans: Sequence[tuple[int, int]] | None = None) -> Digest:
        """The durable half of ``commit`` (after ``finish``): fsync the bytes, rename
        them to their name, fsync the directory.  On failure the ingest file is gone.

        With ``spans`` (the blob's byte ranges at frame boundaries, covering it once, in
        order) the blob is kept as chunks plus a recipe instead (chunks.py), and the
        whole file is not kept: its digest was checked by ``finish``."""
        digest = self._digest
        if digest is None:
            raise IntegrityError("publish before finish")
        if spans is not None:
            try:
                self._file.flush()
                # The ingest file is removed just after: it may become the pack itself.
                self.recipe = self._blobs.chunks.publish(
                    digest, self._file, spans, verified=True, adoptable=self.path)
            finally:
                self.abort()
            self._blobs.drop_whole(digest)
            return digest
        with self._or_abort(digest):
            os.fsync(self._file.fileno())
            final = self._blobs.path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            # rename over an existing blob is harmless: same name, same bytes.
            os.replace(self.path, final)
            fsync_dir(final.parent)
        self._close()
        return digest

    @contextlib.contextmanager
    def _or_abort(self, digest: Digest) -> Iterator[None]:
        """Any failure inside removes the ingest file; a disk error becomes one line."""
        try:
            yield
        except OSError as e:
            self.abort()
            raise disk_error(e, f"blob {digest}") from None
        except BaseException:
            self.abort()
            raise

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.close()

    def abort(self) -> None:
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def keep(self) -> None:
        """Stop, leaving a resumable ingest file's bytes for the next writer of the same
        blob (Ctrl-C, a connection lost for good); any other writer aborts."""
        if not self.resumable:
            self.abort()
            return
        with contextlib.suppress(OSError):
            self._file.flush()
        self._close()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.abort()


class BlobStore:
    """The blob area of a store: provider, ingester and manager in one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.ingest_dir = root / "ingest"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        self.chunks = ChunkStore(root, self.ingest_dir)

    def path(self, digest: Digest) -> Path:
        """Where the blob's whole file is, if it is kept whole (see ``chunked``)."""
        return self.blob_dir / digest.algorithm / digest.encoded

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file() or self.chunks.has_recipe(digest)

    def size(self, digest: Digest) -> int:
        """The blob's size (logical: as its readers see it, however it is kept)."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return self.chunks.read_recipe(digest).size

    def stored_size(self, digest: Digest) -> int:
        """The bytes of its own file: the whole blob, or its recipe (chunks not counted:
        they may be shared)."""
        for path in (self.path(digest), self.chunks.recipe_path(digest)):
            with contextlib.suppress(FileNotFoundError):
                return path.stat().st_size
        raise NotFound(f"blob {digest} not in the store")

    def chunked(self, digest: Digest) -> ChunkedFile | None:
        """The blob as one seekable file over its chunks; None if it is kept whole (or
        not at all).  The whole file is looked for first: a blob converted to chunks
        gets its recipe before its whole file goes, so one of them is always found."""
        if self.path(digest).is_file():
            return None
        try:
            return ChunkedFile(self.chunks, self.chunks.read_recipe(digest))
        except NotFound:
            return None

    def open_file(self, digest: Digest) -> io.BufferedReader | ChunkedFile:
        """The blob's bytes with ``seek``/``read`` at any offset, not checked (for Range
        reads; ``open`` checks the whole)."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            pass
        return ChunkedFile(self.chunks, self.chunks.read_recipe(digest))

    def open(self, digest: Digest, size: int | None = None) -> VerifyingReader:
        """A reader that raises IntegrityError at end of stream if the bytes are wrong.
        For a blob kept as chunks the reader is not a real file (no sendfile): the bytes
        stream from its chunks."""
        return VerifyingReader(self.open_file(digest), digest, size, what="stored blob",
                               at_rest=True)

    def put_chunked(self, digest: Digest, source: Path | BinaryIO,
                    spans: Sequence[tuple[int, int]], verified: bool = False) -> Recipe:
        """Keep the blob ``digest`` as chunks cut at ``spans`` (see chunks.py), from the
        regular file ``source``, hashed on the way unless ``verified``; a whole copy of
        it in the store then goes.  Idempotent."""
        if isinstance(source, Path):
            try:
                f = open(source, "rb")
            except FileNotFoundError:
                raise NotFound(f"blob {digest}: no file {source}") from None
            with f:
                # The store's own whole copy goes just after: it may become the pack.
                recipe = self.chunks.publish(digest, f, spans, verified, adoptable=(
                    source if source == self.path(digest) else None))
        else:
            recipe = self.chunks.publish(digest, source, spans, verified)
        self.drop_whole(digest)
        return recipe

    def drop_whole(self, digest: Digest) -> None:
        """Remove the whole file of a blob that has its recipe (its conversion's last
        step; gc finishes one a crash cut short)."""
        if self.chunks.has_recipe(digest):
            with contextlib.suppress(FileNotFoundError):
                self.path(digest).unlink()

    def read_bytes(self, digest: Digest, size: int | None = None) -> bytes:
        with self.open(digest, size) as r:
            data = r.read()
            r.verify()
        return data

    def writer(self, algorithm: str = "sha256", verified_by: VerifyingReader | None = None,
               resume: Digest | None = None) -> BlobWriter:
        return BlobWriter(self, algorithm, verified_by, resume)

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        if expected is None and self.has(d := Digest.from_bytes(data)):
            return d
        with self.writer(expected.algorithm if expected else "sha256") as w:
            w.write(data)
            return w.commit(expected, len(data))

    def list(self) -> Iterator[Digest]:
        """Every blob, whole or chunked, once, in order."""
        yield from sorted(set(self.chunks.names(self.blob_dir)) | set(self.chunks.recipes()),
                          key=str)

    def space(self) -> BlobSpace:
        """Logical and physical bytes of every blob and chunk (``lamina df``)."""
        blobs = chunked = logical = physical = 0
        for digest in self.list():
            try:
                whole = self.path(digest).stat().st_size
                logical += whole
                physical += whole
            except FileNotFoundError:
                try:
                    logical += self.chunks.read_recipe(digest).size
                    physical += self.chunks.recipe_path(digest).stat().st_size
                except (NotFound, IntegrityError, FileNotFoundError):
                    continue   # deleted meanwhile, or damaged (fsck says which)
                chunked += 1
            blobs += 1
        chunks, chunk_bytes = self.chunks.physical()
        return BlobSpace(blobs, chunked, chunks, logical, physical + chunk_bytes)

    def delete(self, digest: Digest) -> bool:
        """Remove a blob, whole file and recipe; its chunks go when gc finds no recipe
        naming them."""
        gone = self.chunks.delete_recipe(digest)
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return gone
        return True

    def ingest_usage(self) -> tuple[int, int]:
        """How many ingest files there are (being written, or left by a killed writer),
        and their bytes: ``df`` shows them with the temporary files."""
        count = size = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.ingest_dir):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        size += entry.stat(follow_symlinks=False).st_size
                        count += 1
        return count, size

    def sweep_ingest(self, min_age: float = 60.0, dry_run: bool = False) -> tuple[int, int]:
        """Remove ingest files no live writer holds (their lock is free).  Returns how
        many, and their bytes; ``dry_run`` only counts."""
        removed = freed = 0
        for entry in os.scandir(self.ingest_dir):
            # A writer creates its file, then locks it: leave very young files alone
            # so that the gap between the two is never mistaken for abandonment.
            try:
                fd = locks.take_if_abandoned(entry.path, min_age=min_age)
            except OSError:
                continue
            if fd is None:
                continue
            try:
                size = os.fstat(fd).st_size
                if not dry_run:
                    os.unlink(entry.path)
                removed += 1
                freed += size
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        return removed, freed
