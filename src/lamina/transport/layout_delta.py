"""Delta copy into an OCI layout directory (``copy docker://… oci:DIR``, issue 11).

The planner (transport/delta.py) needs the frames the destination already holds.  A
layout has no chunk store and no table of contents of its own, but it needs none: every
zstd:chunked blob in ``DIR/blobs/sha256`` ends with its footer, which says where its TOC
is, and the TOC names each payload frame by the digest of what it inflates to.  So the
layout's frames are found by reading each blob's footer and TOC (``LayoutFrames``, once
per copy, lazily): ``(content digest, compressed length) -> (blob, offset)``.  A blob
whose footer or TOC does not hold (not chunked, damaged, a TOC that lies) simply offers
nothing.  A frame the layout lacks may still be in the local store (a pull of v1 there,
a copy of v2 into a fresh layout): the store's chunks are asked next, leased as a pull
leases them (``DestinationFrames``).  Nothing read from either is trusted on its own: the
reassembled blob's digest is checked against the manifest's before it gets its name, and
any doubt gives the whole blob (the planner's fallback).

The blob is assembled in a temporary file beside its place (``LayoutBlob``:
``blobs/sha256/.<hex>.delta-<random>``, flocked while written), hashed on the way,
checked, fsynced and renamed; a process killed midway leaves that file with its lock
free, and the next delta copy into the layout removes it (``sweep``).  Nothing else in
the layout changes until ``index.json`` is rewritten at the end of the copy, so a killed
copy leaves the layout as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from lamina.digest import Digest
from lamina.errors import IntegrityError, LaminaError
from lamina.image import mediatypes as mt
from lamina.image.manifest import Descriptor
from lamina.layer.chunkmap import ChunkMap, chunk_map, read_toc
from lamina.layer.zstdchunked import annotations_from_blob
from lamina.store.files import disk_error
from lamina.store.store import Lease, Store
from lamina.transport.delta import BlobRanges, StoreChunks, delta_fetch
from lamina.transport.filetree import TEMP_MARK as FILE_TEMP_MARK
from lamina.transport.filetree import DirWriter, locked_temp, sweep_temps

Held = tuple[str, int]       # a frame of the layout: its blob's path, the frame's offset
Frame = Held | Digest        # ... or a chunk of the store
TEMP_MARK = ".delta-"        # in the name of a blob being assembled
_WRITE_BUFFER = 1 << 20


def blob_chunks(path: str) -> ChunkMap | None:
    """The frames of the chunked blob at ``path``, from its own footer and TOC; None when
    it is not one or they do not hold."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size

        def read_at(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        # The blob's own TOC checksum: nothing to check it against but itself (the
        # annotations went with its manifest); the whole digest decides later anyway.
        toc = read_toc(read_at, annotations_from_blob(read_at, size), size)
        return chunk_map(toc, size) if toc is not None else None
    except (LaminaError, OSError, ValueError):
        return None
    finally:
        os.close(fd)


class LayoutFrames:
    """The frames of the chunked blobs in one ``blobs/<algorithm>`` directory, as the
    planner's ``Holdings``.  Nothing to lease: a layout has no gc, and a frame whose blob
    went meanwhile fails the whole digest (then the blob is fetched whole)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._index: dict[tuple[str, int], Held] | None = None

    def _frames(self) -> dict[tuple[str, int], Held]:
        if self._index is None:
            self._index = {}
            sweep_temps(self.directory, (TEMP_MARK, FILE_TEMP_MARK))
            with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                        cmap = blob_chunks(entry.path)
                        if cmap is not None:
                            self.add(entry.path, cmap)
        return self._index

    def add(self, path: str, cmap: ChunkMap) -> None:
        """Offer the frames of the blob at ``path`` (one this copy has just written)."""
        index = self._frames()
        for i, content in cmap.contents:
            offset, length = cmap.spans[i]
            index.setdefault((content, length), (path, offset))

    def empty(self) -> bool:
        return not self._frames()

    def candidates(self, cmap: ChunkMap) -> dict[int, Held]:
        index = self._frames()
        out: dict[int, Held] = {}
        for i, content in cmap.contents:
            frame = index.get((content, cmap.spans[i][1]))
            if frame is not None:
                out[i] = frame
        return out

    def present(self, frame: Held) -> bool:
        return os.path.isfile(frame[0])


class DestinationFrames:
    """The layout's frames first, then the store's chunks for the rest (``Holdings``)."""

    def __init__(self, layout: LayoutFrames, store: StoreChunks | None) -> None:
        self.layout = layout
        self.store = store

    def candidates(self, cmap: ChunkMap) -> dict[int, Frame]:
        out: dict[int, Frame] = dict(self.layout.candidates(cmap))
        if self.store is not None:
            rest = tuple((i, c) for i, c in cmap.contents if i not in out)
            if rest:
                out.update(self.store.candidates(ChunkMap(cmap.spans, rest)))
        return out

    def present(self, frame: Frame) -> bool:
        if isinstance(frame, Digest):
            return self.store is not None and self.store.present(frame)
        return self.layout.present(frame)


class LayoutBlob:
    """One blob assembled in a temporary file beside its place in a layout directory
    (the planner's ``Assembly``): renamed into place by ``finish`` only once its size and
    digest are the descriptor's."""

    def __init__(self, writer: DirWriter, desc: Descriptor, store: Store | None) -> None:
        self.writer = writer
        self.desc = desc
        self.store = store
        self.name = f"blobs/{desc.digest.algorithm}/{desc.digest.encoded}"
        dest = writer.root / self.name
        self._whole = desc.digest.hasher()
        self.count = 0
        self._sources: dict[str, int] = {}
        self._buffer = bytearray()
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.path, self._fd = locked_temp(dest, TEMP_MARK)
        except OSError as e:
            raise disk_error(e, str(dest)) from None
        self._renamed = False

    def add(self, data: bytes | memoryview) -> None:
        self._whole.update(data)
        self.count += len(data)
        self._buffer += data
        if len(self._buffer) >= _WRITE_BUFFER:
            self._flush()

    def stored(self, frame: Frame, length: int) -> None:
        """A frame of another blob of the layout, or a chunk of the store: read (its
        bytes checked only by the whole digest) and written here."""
        if isinstance(frame, Digest):
            assert self.store is not None
            self.add(self.store.blobs.chunks.read_chunk(frame, length))
            return
        path, offset = frame
        try:
            fd = self._sources.get(path)
            if fd is None:
                fd = self._sources[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(fd, length, offset)
        except OSError as e:
            raise IntegrityError(f"{path}: cannot read a frame to reuse: {e.strerror}") from None
        if len(data) != length:
            raise IntegrityError(f"{path}: shorter than its TOC says")
        self.add(data)

    def _flush(self) -> None:
        view = memoryview(self._buffer)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            raise disk_error(e, str(self.writer.root / self.name)) from None
        finally:
            view.release()
        self._buffer.clear()

    def finish(self, size: int) -> None:
        """Check size and digest, make the bytes durable, then give the blob its name
        (IntegrityError, nothing named, on a mismatch)."""
        try:
            got = self._whole.hexdigest()
            if self.count != size or got != self.desc.digest.encoded:
                raise IntegrityError(
                    f"blob {self.desc.digest}: assembled {self.count} bytes with digest "
                    f"{self.desc.digest.algorithm}:{got}, expected {size} bytes; not kept")
            self._flush()
            try:
                os.fsync(self._fd)
            except OSError as e:
                raise disk_error(e, str(self.writer.root / self.name)) from None
            self.writer.adopt(self.path, self.name)
            self._renamed = True
        finally:
            self.abort()

    def abort(self) -> None:
        """Close, and remove the temp file unless it was renamed (idempotent)."""
        for fd in self._sources.values():
            os.close(fd)
        self._sources.clear()
        if self._fd >= 0:
            if not self._renamed:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            os.close(self._fd)     # the lock goes last: a sweep never sees it free first
            self._fd = -1


class LayoutDelta:
    """The delta path of one layout sink (``OciLayoutSink.put_blob_delta``); ``store``:
    the local store, whose chunks are offered too, under a lease held until ``close``."""

    def __init__(self, writer: DirWriter, store: Store | None = None) -> None:
        self.writer = writer
        self.store = store
        self._frames: dict[str, LayoutFrames] = {}
        self._lease: Lease | None = None

    def _store_chunks(self) -> StoreChunks | None:
        if self.store is None or not self.store.meta.has_shareable():
            return None
        if self._lease is None:
            self._lease = self.store.open_lease()
        store, lease = self.store, self._lease
        return StoreChunks(store, lambda keys: store.meta.add_lease_resources(lease.id, keys))

    def close(self) -> None:
        """End the lease on the store's chunks (idempotent)."""
        if self._lease is not None:
            self._lease.close()
            self._lease = None

    def put(self, desc: Descriptor, ranges: BlobRanges,
            progress: Callable[[int, int | None], None] | None) -> int | None:
        """Write ``desc`` fetching only the frames the layout lacks; the bytes not
        fetched, or None when the caller must fetch it whole."""
        if not mt.is_layer(desc.media_type) or not mt.is_chunked(desc.annotations):
            return None
        directory = self.writer.root / "blobs" / desc.digest.algorithm
        frames = self._frames.setdefault(desc.digest.algorithm, LayoutFrames(directory))
        store = self._store_chunks()
        if frames.empty() and store is None:
            return None
        result = delta_fetch(desc, ranges, DestinationFrames(frames, store),
                             lambda: LayoutBlob(self.writer, desc, self.store), progress)
        if result is None:
            return None
        frames.add(str(directory / desc.digest.encoded), result.chunks)
        return result.reused
