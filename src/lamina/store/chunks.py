"""Blobs kept as chunks: each chunk once, named by the sha256 of its bytes, plus a recipe.

A chunked layer (zstd:chunked) is a run of frames; two layers that hold the same file hold
the same frame bytes.  Stored as its frames, a blob costs only the frames the store did
not have (casync/desync keep a chunk store plus one index per blob the same way; unlike
containers/storage, lamina keeps the exact frames, so the blob keeps its digest and
every reader still gets its original bytes).  Layout, beside ``blobs/``::

    packs/<name>.pack       chunks back to back, and
    packs/<name>.idx        where each lies (store/packs.py: the bulk form)
    chunks/sha256/<hex>     one chunk in a file of its own (stores of lamina before
                            packs; still read, swept and checked)
    chunks/lock             flock: writers shared, gc's chunk sweep exclusive
    recipes/sha256/<hex>    the blob <hex>: its size and its chunks in order (JSON)

A recipe names chunks by digest, never by place: gc may rewrite a pack (dropping the
chunks no recipe names) without touching a recipe.  The store never parses layers: the
caller says where the blob splits (``spans``, the byte ranges at frame boundaries, from
``layer/``).  Crash safety, in order:

1. the whole blob was verified (a ``BlobWriter.finish``, or hashed here before anything
   is written: ``publish`` of an unverified file; a ``ChunkSink`` checks it after its
   pack is durable, before the recipe);
2. the chunks the store lacks go into one pack, fsynced, renamed into ``packs/`` and
   then given its index (the pack's commit point); a chunk already stored is not
   written again;
3. only then the recipe, the same way: a recipe never names a chunk not on disk;
4. then the whole-blob file (the ingest file, or a blob being converted) goes.

Killed between 2 and 3, the new pack belongs to no recipe: gc removes it as it removes
the ingest files of dead writers (a pack without its index too).  Steps 2-3 run under a
*shared* flock of ``chunks/lock`` and gc's chunk sweep under an *exclusive* one, so gc
never takes a chunk a writer has just found present (or just packed) before its recipe
names it.  Nothing here touches the metadata while holding that lock (gc holds the
metadata's write lock while it waits for it).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lamina.digest import CHUNK, Digest, VerifyingReader
from lamina.errors import IntegrityError, InvalidInput, NotFound
from lamina.store.files import disk_error, fsync_dir
from lamina.store.packs import Location, PackEntry, PackSet, PackWriter, adopt, write_index

RECIPE_FORMAT = "lamina-recipe-v1"
MAX_RECIPE_BYTES = 64 << 20   # a recipe is ~80 bytes a chunk: a million chunks fit
_IN_MEMORY = 4 << 20          # a long span is hashed this much at a time
_READ_BUFFER = 8 << 20        # spans are read through a buffer this large
_PARALLEL_FROM = 16 << 20     # blobs this large are hashed on two threads
_OPEN_PACKS = 8               # pack descriptors a reader keeps open


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



def _hash_spans(fd: int, spans: list[tuple[int, int]], whole: Any
                ) -> list[tuple[Digest, int]]:
    """``_hash_run`` over ``spans``; a large blob already verified whole (``whole`` None)
    in two halves on two threads (hashlib lets go of the GIL): a chunked layer lamina has
    just written (``BlobWriter.publish``), ~100 ms for 55 MB on one core here."""
    if whole is not None or len(spans) < 64 or spans[-1][0] < _PARALLEL_FROM:
        return _hash_run(fd, spans, whole)
    half = len(spans) // 2
    with ThreadPoolExecutor(2, thread_name_prefix="lamina-hash") as pool:
        first = pool.submit(_hash_run, fd, spans[:half], None)
        second = _hash_run(fd, spans[half:], None)
        return first.result() + second


def _hash_run(fd: int, spans: list[tuple[int, int]], whole: Any
              ) -> list[tuple[Digest, int]]:
    """Each span's sha256 (and the whole file's into ``whole``); ``spans`` are
    consecutive (``check_spans``).  Read sequentially through one large buffer: a
    chunked layer has thousands of spans, and a read(2) each cost a cold pull more than
    the hashing did on a busy machine (bench_delta)."""
    out: list[tuple[Digest, int]] = []
    if not spans:
        return out
    start, end = spans[0][0], spans[-1][0] + spans[-1][1]
    with io.BufferedReader(_Slice(os.dup(fd), start, end - start), _READ_BUFFER) as f:
        for _, length in spans:
            h = hashlib.sha256()
            left = length
            while left:
                piece = f.read(min(_IN_MEMORY, left))
                if not piece:
                    raise IntegrityError("the source of a chunked blob ended early")
                h.update(piece)
                if whole is not None:
                    whole.update(piece)
                left -= len(piece)
            out.append((Digest("sha256", h.hexdigest()), length))
    return out


class _Temp:
    """A recipe being written: ``ingest/recipe-<random>``, locked like any ingest file
    (gc removes it once its writer is gone)."""

    def __init__(self, ingest: Path, digest: Digest, kind: str = "recipe") -> None:
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


class _Slice(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, read as a stream (a packed chunk)."""

    def __init__(self, path: str | int, offset: int, length: int) -> None:
        """``path``: a file name, or a descriptor the slice then owns."""
        super().__init__()
        self._fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._at = offset
        self._end = offset + length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[:max(0, self._end - self._at)]
        if not view:
            return 0
        n = os.preadv(self._fd, [view], self._at)
        self._at += n
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class ChunkStore:
    """The chunk and recipe areas of a store (used through ``BlobStore``)."""

    def __init__(self, root: Path, ingest_dir: Path) -> None:
        self.chunk_dir = root / "chunks"
        self.recipe_dir = root / "recipes"
        self.ingest_dir = ingest_dir
        self.packs = PackSet(root / "packs")
        self._chunk_root = str(self.chunk_dir)

    # -- names --------------------------------------------------------------------------
    def chunk_path(self, digest: Digest) -> Path:
        """Where a loose chunk (one file of its own) would be."""
        return self.chunk_dir / digest.algorithm / digest.encoded

    def recipe_path(self, blob: Digest) -> Path:
        return self.recipe_dir / blob.algorithm / blob.encoded

    def locate(self, digest: Digest, fresh: bool = False) -> Location | None:
        """Where the chunk's bytes are: in a pack, or a loose file; None if nowhere.
        ``fresh``: a reader that must find it looks at the pack directory again."""
        where = self.packs.locate(digest, fresh)
        if where is not None:
            return where
        name = f"{self._chunk_root}/{digest.algorithm}/{digest.encoded}"
        try:
            return Location(name, 0, os.stat(name).st_size)
        except FileNotFoundError:
            return None

    def has_chunk(self, digest: Digest) -> bool:
        return self.locate(digest) is not None

    def _stored(self, digest: Digest, loose: bool) -> bool:
        """``has_chunk`` for a writer under the lock that refreshed the packs first;
        ``loose``: whether the store has loose chunks at all."""
        if self.packs.known(digest) is not None:
            return True
        return loose and os.path.exists(
            f"{self._chunk_root}/{digest.algorithm}/{digest.encoded}")

    def _has_loose(self) -> bool:
        return os.path.isdir(f"{self._chunk_root}/sha256")

    def has_recipe(self, blob: Digest) -> bool:
        return self.recipe_path(blob).is_file()

    def open_chunk(self, digest: Digest) -> VerifyingReader:
        """A chunk's bytes, checked against its name at end of stream."""
        where = self.locate(digest, fresh=True)
        if where is None:
            raise NotFound(f"chunk {digest} not in the store")
        try:
            raw = _Slice(where.path, where.offset, where.length)
        except FileNotFoundError:
            raise NotFound(f"chunk {digest} not in the store") from None
        return VerifyingReader(raw, digest, where.length, what="stored chunk", at_rest=True)

    def read_chunk(self, digest: Digest, length: int) -> bytes:
        """A stored chunk's bytes (not checked: the caller hashes them), which must be
        ``length`` long."""
        for fresh in (False, True):
            where = self.locate(digest, fresh)
            if where is None:
                continue
            if where.length != length:
                raise InvalidInput(f"stored chunk {digest} is not {length} bytes")
            try:
                fd = os.open(where.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue     # its pack was rewritten by gc meanwhile: look again
            try:
                return _pread_full(fd, length, where.offset)
            finally:
                os.close(fd)
        raise NotFound(f"chunk {digest} not in the store")

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

    def loose(self) -> Iterator[Digest]:
        """The chunks kept one file each."""
        return self.names(self.chunk_dir)

    def chunks(self) -> Iterator[Digest]:
        """Every stored chunk, once (packed or loose)."""
        seen: set[Digest] = set()
        for entries in self.packs.packs().values():
            for e in entries:
                if e.digest not in seen:
                    seen.add(e.digest)
                    yield e.digest
        for digest in self.loose():
            if digest not in seen:
                yield digest

    def recipes(self) -> Iterator[Digest]:
        return self.names(self.recipe_dir)

    def delete_recipe(self, blob: Digest) -> bool:
        try:
            self.recipe_path(blob).unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_chunk(self, digest: Digest) -> int:
        """Remove a loose chunk; its bytes (0 if it was not there)."""
        path = self.chunk_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def forget_chunk(self, digest: Digest) -> None:
        """Make a (damaged) chunk absent: its loose file goes and every pack index stops
        naming it (its bytes go when gc next rewrites the pack)."""
        self.delete_chunk(digest)
        for name, entries in self.packs.packs().items():
            if any(e.digest == digest for e in entries):
                write_index(self.packs.pack_dir, name,
                            [e for e in entries if e.digest != digest])
        self.packs.packs()

    def remove_pack(self, name: str) -> None:
        """Index first: a pack without one is no longer read, then debris."""
        for path in (self.packs.index_path(name), self.packs.pack_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.packs.removed(name)

    def repack(self, name: str, keep: Sequence[PackEntry]) -> str:
        """Rewrite pack ``name`` holding only ``keep`` (its live chunks); the new name.
        Under the exclusive lock (gc): no reader resolves a chunk to the old pack once
        its index is gone, and one that did retries (``read_chunk``, ``ChunkedFile``)."""
        src = os.open(self.packs.pack_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            new = self._copy_pack(src, keep)
        finally:
            os.close(src)
        self.remove_pack(name)
        return new

    def _copy_pack(self, src: int, spans: Sequence[PackEntry]) -> str:
        """A new pack of ``spans`` of the file ``src``, committed and known; its name."""
        w = PackWriter(self.ingest_dir)
        try:
            for e in spans:
                w.copy(e.digest, src, e.offset, e.length)
            name = w.commit(self.packs.pack_dir)
        except BaseException:
            w.drop()
            raise
        self.packs.added(name, w.entries)
        return name

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
                verified: bool, adoptable: Path | None = None) -> Recipe:
        """Store ``source`` (a regular file holding the blob ``blob``) as chunks plus a
        recipe; idempotent.  ``verified``: the caller checked the whole digest already;
        else it is hashed here first and nothing is written on a mismatch.
        ``adoptable``: ``source``'s path, a store file its owner removes afterwards; if
        every chunk is new it becomes the pack itself (a link, no copy)."""
        fd = source.fileno()
        size = os.fstat(fd).st_size
        cut = check_spans(spans, size)
        with self.locked(exclusive=False):
            if self.has_recipe(blob):
                return self.read_recipe(blob)
            whole = None if verified else blob.hasher()
            entries = _hash_spans(fd, cut, whole)
            if whole is not None and whole.hexdigest() != blob.encoded:
                raise IntegrityError(f"blob {blob}: content has digest "
                                     f"{blob.algorithm}:{whole.hexdigest()} (corrupt or wrong "
                                     "blob); not stored as chunks")
            new: list[PackEntry] = []
            seen: set[Digest] = set()
            self.packs.refresh()
            loose = self._has_loose()
            for (digest, length), (offset, _) in zip(entries, cut, strict=True):
                if digest not in seen and not self._stored(digest, loose):
                    new.append(PackEntry(digest, offset, length))
                seen.add(digest)
            try:
                if new:
                    self._pack(fd, new, adoptable if len(new) == len(cut) else None)
                recipe = Recipe(blob, size, tuple(entries))
                self._write_recipe(recipe)
            except OSError as e:
                raise disk_error(e, f"the chunks of blob {blob}") from None
        return recipe

    def _pack(self, fd: int, new: list[PackEntry], adoptable: Path | None) -> None:
        """Pack the spans ``new`` of the file ``fd``: the file itself when it is all
        new (``adoptable``), else a copy of those spans."""
        if adoptable is not None:
            with contextlib.suppress(OSError):    # another file system, no links: copy
                self.packs.added(adopt(self.packs.pack_dir, adoptable, new),
                                 new)
                return
        self._copy_pack(fd, new)

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

    def physical(self) -> tuple[int, int]:
        """Distinct chunks, and the bytes of every pack, pack index and loose chunk."""
        count = len(set(self.chunks()))
        size = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.packs.pack_dir):
                with contextlib.suppress(FileNotFoundError):
                    size += entry.stat().st_size
        for digest in self.loose():
            with contextlib.suppress(FileNotFoundError):
                size += self.chunk_path(digest).stat().st_size
        return count, size


class ChunkSink:
    """A blob stored as chunks while it is assembled span by span, in order (a delta
    pull, transport/delta.py), with no whole copy written and read back: a span already
    stored is named (``stored``), a new one appended to one pack (``add``), and the whole
    blob hashed once on the way.  The order of ``publish`` above holds: the shared lock
    from the first chunk to the recipe, the pack durable before ``finish`` checks the
    whole digest, and only then the recipe.  Killed or refused midway, the new pack
    belongs to no recipe: gc's, as above.  Touches no metadata (the lock is held)."""

    def __init__(self, chunks: ChunkStore, blob: Digest) -> None:
        self._chunks = chunks
        self.blob = blob
        self._whole = blob.hasher()
        self._entries: list[tuple[Digest, int]] = []
        self._seen: set[Digest] = set()
        self._pack: PackWriter | None = None
        self.count = 0
        self.recipe: Recipe | None = None   # set by finish()
        self._lock: int | None = chunks.lock(exclusive=False)
        chunks.packs.refresh()
        self._loose = chunks._has_loose()

    def stored(self, digest: Digest, length: int) -> None:
        """A span that is the stored chunk ``digest`` (leased by the caller): hashed
        into the whole digest, which checks it, never written again."""
        data = self._chunks.read_chunk(digest, length)
        self._whole.update(data)
        self._seen.add(digest)
        self._entries.append((digest, length))
        self.count += length

    def add(self, data: bytes | memoryview) -> None:
        """A span of new bytes: packed unless a chunk holds them already."""
        self._whole.update(data)
        self.count += len(data)
        digest = Digest.from_hasher(hashlib.sha256(data))
        self._entries.append((digest, len(data)))
        if digest in self._seen or self._chunks._stored(digest, self._loose):
            self._seen.add(digest)
            return
        self._seen.add(digest)
        if self._pack is None:
            self._pack = PackWriter(self._chunks.ingest_dir)
        self._pack.add(digest, data)

    def finish(self, size: int) -> Recipe:
        """Make the new chunks durable, check the whole blob's size and digest, then
        write its recipe and let go of the lock; IntegrityError (nothing named) on a
        mismatch."""
        try:
            if self._pack is not None:
                pack, self._pack = self._pack, None
                try:
                    name = pack.commit(self._chunks.packs.pack_dir)
                except BaseException:
                    pack.drop()
                    raise
                self._chunks.packs.added(name, pack.entries)
            got = Digest.from_hasher(self._whole)
            if self.count != size or got != self.blob:
                raise IntegrityError(f"blob {self.blob}: content has digest {got} and "
                                     f"{self.count} bytes, expected {size} (corrupt or "
                                     "wrong blob); not stored")
            recipe = Recipe(self.blob, size, tuple(self._entries))
            if not self._chunks.has_recipe(self.blob):
                self._chunks._write_recipe(recipe)
            self.recipe = recipe
        finally:
            self.abort()
        return recipe

    def publish(self, spans: Sequence[tuple[int, int]] | None = None) -> Digest:
        """Nothing left to do after ``finish`` (the recipe is durable); the blob's
        digest (``BlobWriter.publish``'s signature, for ``transport/local``)."""
        return self.blob

    def abort(self) -> None:
        """Drop a pack not yet committed and let go of the lock (idempotent)."""
        if self._pack is not None:
            self._pack.drop()
            self._pack = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


class ChunkedFile(io.RawIOBase):
    """A blob kept as chunks, read as one file: ``read``/``readinto``/``seek`` and
    ``pread`` at any offset give its original bytes.  Not a real file: no ``fileno``
    (a push cannot sendfile(2) it; the bytes stream instead).  Packs are opened as the
    reads reach them (a few descriptors kept), a loose chunk one at a time."""

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
        self._fds: dict[str, int] = {}

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
            fd, base = self._open(digest, length)
            got = os.preadv(fd, [view[filled:filled + want]], base + within)
            if got <= 0:
                raise IntegrityError(f"blob {self.recipe.blob}: chunk {digest} is shorter "
                                     "than its recipe says (run `lamina fsck`)")
            filled += got
            offset += got
        return filled

    def _open(self, digest: Digest, length: int) -> tuple[int, int]:
        """A descriptor holding the chunk, and the chunk's offset in it."""
        for fresh in (False, True):
            where = self._chunks.locate(digest, fresh)
            if where is None:
                continue
            if where.length != length:
                raise IntegrityError(f"blob {self.recipe.blob}: chunk {digest} is "
                                     f"{where.length} bytes, its recipe says {length} "
                                     "(run `lamina fsck`)")
            fd = self._fds.get(where.path)
            if fd is None:
                try:
                    fd = os.open(where.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue     # gc rewrote its pack meanwhile: look again
                if len(self._fds) >= _OPEN_PACKS:
                    self._close_fds()
                self._fds[where.path] = fd
            return fd, where.offset
        raise IntegrityError(f"blob {self.recipe.blob}: chunk {digest} is missing from "
                             "the store (run `lamina fsck`)")

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def close(self) -> None:
        self._close_fds()
        super().close()
