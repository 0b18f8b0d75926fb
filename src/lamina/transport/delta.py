"""Delta pull of a zstd:chunked layer: fetch only the frames the store lacks and
reassemble the exact blob (issue 11, item 2).

For a layer whose descriptor carries the zstd:chunked annotations and that the store
lacks, with a source that serves byte ranges (``BlobRanges.read``):

1. fetch the blob's tail (TOC, tar-split, footer) in one Range request and check the
   TOC against the ``manifest-checksum`` annotation (``layer/zstdchunked.parse_toc``);
2. for each payload frame, look its uncompressed digest (the TOC's chunk digest) up in
   ``chunk_contents``: a stored chunk of the *same compressed length* is taken as those
   bytes (same content, same length: almost surely the same compressor made it; the
   whole digest decides below).  Reused chunks are leased before they are looked at, so
   gc cannot take them meanwhile (store/chunks.py);
3. the header frames between payloads (~100 bytes a file, no digest of their own) are
   rebuilt from the tar-split and compressed as lamina's writer does; one whose length
   matches is used, else fetched;
4. the rest is fetched with coalesced Range requests (neighbours closer than ``GAP``
   merge: a request costs more than a few hundred bytes), a few at once;
5. the blob is assembled in order into a ``ChunkSink`` (store/chunks.py): reused spans
   are named, not copied; new ones are written as chunks once; the stream is hashed
   once, and the recipe is written only when it has the manifest's digest and size:
   nothing unverified is ever named.  No whole copy is written and read back (that
   cost ~60% of a delta pull's CPU, bench_delta).

Where the reused frames come from and where the blob is assembled are the caller's
(``delta_fetch``: a ``Holdings`` and an ``Assembly``): the store above, or an OCI layout
directory whose own chunked blobs hold the frames (transport/layout_delta.py).  The plan
is the same for both, and made here only.

A digest mismatch with rebuilt header frames retries once fetching them instead; any
other trouble (no TOC, a TOC that lies, a registry answering a Range with the whole
body or a wrong ``Content-Range``, a damaged stored chunk, too little to reuse) gives
``None``: the caller fetches the blob whole, as ever.  containers/storage
(``pkg/chunked/storage_linux.go``) plans the same way but gives up the blob digest; lamina
keeps it, so push, save and serve hand out the very bytes the registry has.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from lamina.digest import Digest
from lamina.errors import IntegrityError, InvalidInput, LaminaError
from lamina.image.manifest import Descriptor
from lamina.layer.chunkmap import (
    ChunkMap,
    chunk_map,
    compress_headers,
    cut_pending,
    header_frames,
)
from lamina.layer.zstdchunked import (
    MAX_TAR_SPLIT_SIZE,
    MAX_TOC_SIZE,
    SKIPPABLE_HEADER,
    Toc,
    parse_tar_split,
    parse_toc,
    toc_checksum,
    toc_location,
)
from lamina.store.chunks import ChunkSink
from lamina.store.store import Store

GAP = 2048            # merge fetches closer than this (a request's headers cost ~1 KB)
MAX_FETCH = 0.5       # fetching more than this share of the blob: a plain pull is simpler
FETCHERS = 4          # Range requests in flight at once
_TAIL_LIMIT = MAX_TOC_SIZE + MAX_TAR_SPLIT_SIZE + 4096


class BlobRanges(Protocol):
    """Byte ranges of one blob from its source; raises a ``LaminaError`` when the source
    does not answer a range exactly (the caller then fetches the blob whole)."""

    def read(self, offset: int, length: int) -> bytes: ...


H = TypeVar("H")                   # a held frame, as its Holdings names it
H_contra = TypeVar("H_contra", contravariant=True)


class Holdings(Protocol[H]):
    """The frames a destination already holds, found by what they inflate to."""

    def candidates(self, cmap: ChunkMap) -> dict[int, H]:
        """For payload spans of ``cmap`` (``cmap.contents``: span index, content digest),
        a held frame of that content and of the span's compressed length; kept from
        removal (leased) before it is returned."""
        ...

    def present(self, frame: H) -> bool:
        """Whether ``frame`` is still there (looked at after it was leased)."""
        ...


class Assembly(Protocol[H_contra]):
    """Where the blob is written span by span, in order, hashed on the way; ``finish``
    checks its size and digest before anything is named, ``abort`` leaves nothing."""

    count: int

    def add(self, data: bytes | memoryview) -> None: ...
    def stored(self, frame: H_contra, length: int) -> None: ...
    def finish(self, size: int) -> object: ...
    def abort(self) -> None: ...


W = TypeVar("W", bound=Assembly[Any])


@dataclass(frozen=True)
class DeltaResult(Generic[W]):
    writer: W              # finished: digest and size checked
    chunks: ChunkMap       # record their contents
    reused: int            # bytes not fetched (held frames reused, rebuilt frames)
    fetched: int           # layer bytes fetched (tail included)


@dataclass(frozen=True)
class _Plan:
    toc: Toc
    cmap: ChunkMap
    tail_start: int
    tail: bytes
    # per span: ("chunk", held frame), ("made", bytes), ("fetch", None) or ("tail", None)
    sources: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Tail:
    """A layer's tail as one Range request brought it (TOC, tar-split, footer), and
    where its TOC says to cut the blob."""

    cmap: ChunkMap
    tail_start: int
    tail: bytes


def fetch_toc(desc: Descriptor, ranges: BlobRanges) -> tuple[Tail, Toc] | None:
    """The tail (TOC, tar-split, footer) of a zstd:chunked layer by one Range request,
    its TOC checked against the annotation; None if not chunked or it does not hold."""
    loc = toc_location(desc.annotations)
    checksum = toc_checksum(desc.annotations)
    if loc is None or checksum is None:
        return None
    tail_start = loc.offset - SKIPPABLE_HEADER
    if not 0 < tail_start < desc.size or desc.size - tail_start > _TAIL_LIMIT:
        return None
    try:
        tail = ranges.read(tail_start, desc.size - tail_start)
        toc = parse_toc(tail[SKIPPABLE_HEADER:SKIPPABLE_HEADER + loc.length], checksum,
                        desc.size, loc)
        return Tail(chunk_map(toc, desc.size), tail_start, tail), toc
    except LaminaError:
        return None   # a TOC that lies, a registry that ignores Range: fetch it whole


class StoreChunks:
    """The store's chunks as ``Holdings``: found by content in ``chunk_contents``."""

    def __init__(self, store: Store, lease: Callable[[Sequence[str]], None],
                 besides: Collection[str] = ()) -> None:
        self.store = store
        self.lease = lease
        self.besides = besides     # kept-whole layers not to cut (cut_pending)

    def candidates(self, cmap: ChunkMap) -> dict[int, Digest]:
        # Layers kept whole that share content with this one are cut into chunks first
        # (a cold pull keeps them whole: chunkmap.cut_pending).
        cut_pending(self.store, {content for _, content in cmap.contents}, self.lease,
                    self.besides)
        candidates: dict[int, str] = {}
        for i, content in cmap.contents:
            length = cmap.spans[i][1]
            for chunk, n in self.store.meta.find_chunk_for_content(content):
                if n == length:
                    candidates[i] = chunk
                    break
        # Leased first, then looked at: a chunk present now stays until the lease ends.
        self.lease(sorted(set(candidates.values())))
        return {i: Digest.parse(c) for i, c in candidates.items()}

    def present(self, frame: Digest) -> bool:
        return self.store.blobs.chunks.has_chunk(frame)


def delta_pull(store: Store, desc: Descriptor, ranges: BlobRanges,
               lease: Callable[[Sequence[str]], None],
               progress: Callable[[int, int | None], None] | None = None,
               besides: Collection[str] = ()) -> DeltaResult[ChunkSink] | None:
    """Fetch ``desc`` through ``ranges`` reusing what ``store`` holds (see the module);
    None when it cannot or should not (then fetch it whole).  ``lease(keys)`` registers
    chunk digests in the pull's lease.  Layers the store keeps whole that share content
    with this one are cut into chunks first (``chunkmap.cut_pending``), but for those
    ``besides`` (the ones this pull kept whole)."""
    if toc_location(desc.annotations) is None or not store.meta.has_shareable(besides):
        return None
    return delta_fetch(desc, ranges, StoreChunks(store, lease, besides),
                       lambda: ChunkSink(store.blobs.chunks, desc.digest), progress)


def delta_fetch(desc: Descriptor, ranges: BlobRanges, held: Holdings[H],
                assembly: Callable[[], W],
                progress: Callable[[int, int | None], None] | None = None
                ) -> DeltaResult[W] | None:
    """The delta pull of ``desc`` (see the module) reusing the frames ``held`` names,
    assembled into a fresh ``assembly()``; None when it cannot or should not."""
    if toc_location(desc.annotations) is None:
        return None
    got = fetch_toc(desc, ranges)
    if got is None:
        return None
    head, toc = got
    cmap, tail_start, tail = head.cmap, head.tail_start, head.tail
    try:
        made = _header_frames(toc, tail, tail_start)
    except LaminaError:
        return None
    for rebuild in (True, False):
        plan = _plan(held, desc, toc, cmap, tail_start, tail, made if rebuild else None)
        if plan is None:
            return None
        try:
            return _assemble(assembly, desc, plan, ranges, progress)
        except IntegrityError:
            if not any(kind == "made" for kind, _ in plan.sources):
                return None
            # a rebuilt header frame was not the blob's: fetch those too, once
        except LaminaError:
            return None
    return None


def _header_frames(toc: Toc, tail: bytes, tail_start: int) -> list[bytes] | None:
    loc = toc.location
    if not loc.tar_split_offset or toc.tar_split_digest is None:
        return None
    at = loc.tar_split_offset - tail_start
    return compress_headers(header_frames(
        parse_tar_split(tail[at:at + loc.tar_split_length], toc)))


def _plan(held: Holdings[H], desc: Descriptor, toc: Toc, cmap: ChunkMap, tail_start: int,
          tail: bytes, made: list[bytes] | None) -> _Plan | None:
    payload = dict(cmap.contents)
    candidates = held.candidates(cmap)
    headers = [i for i, (offset, _) in enumerate(cmap.spans)
               if i not in payload and offset < tail_start]
    rebuilt = made if made is not None and len(made) == len(headers) else None
    sources: list[tuple[str, object]] = []
    fetch = 0
    h = 0
    for i, (offset, length) in enumerate(cmap.spans):
        if offset >= tail_start:
            sources.append(("tail", None))
            continue
        reuse = candidates.get(i)
        if reuse is not None and held.present(reuse):
            sources.append(("chunk", reuse))
            continue
        if i not in payload:
            frame = rebuilt[h] if rebuilt is not None else None
            h += 1
            if frame is not None and len(frame) == length:
                sources.append(("made", frame))
                continue
        sources.append(("fetch", None))
        fetch += length
    if fetch > MAX_FETCH * desc.size:
        return None
    return _Plan(toc, cmap, tail_start, tail, tuple(sources))


def _runs(plan: _Plan) -> list[tuple[int, int]]:
    """The spans to fetch, merged across gaps under ``GAP``: ``(offset, length)``."""
    runs: list[tuple[int, int]] = []
    for (kind, _), (offset, length) in zip(plan.sources, plan.cmap.spans, strict=True):
        if kind != "fetch":
            continue
        if runs and offset - (runs[-1][0] + runs[-1][1]) <= GAP:
            start = runs[-1][0]
            runs[-1] = (start, offset + length - start)
        else:
            runs.append((offset, length))
    return runs


def _assemble(assembly: Callable[[], W], desc: Descriptor, plan: _Plan, ranges: BlobRanges,
              progress: Callable[[int, int | None], None] | None) -> DeltaResult[W]:
    runs = _runs(plan)
    fetched = len(plan.tail) + sum(n for _, n in runs)
    with ThreadPoolExecutor(FETCHERS, thread_name_prefix="lamina-delta") as pool:
        pending = iter(list(pool.map(lambda r: ranges.read(*r), runs)))
    w = assembly()
    try:
        _write(w, plan, runs, pending, progress, desc.size)
        w.finish(desc.size)
    except BaseException:
        w.abort()
        raise
    return DeltaResult(w, plan.cmap, desc.size - fetched, fetched)


def _write(w: Assembly[Any], plan: _Plan, runs: list[tuple[int, int]],
           fetched: Iterator[bytes], progress: Callable[[int, int | None], None] | None,
           size: int) -> None:
    run_index = -1
    run: tuple[int, int] = (0, 0)
    data = b""
    for (kind, what), (offset, length) in zip(plan.sources, plan.cmap.spans, strict=True):
        if kind == "tail":
            w.add(plan.tail[offset - plan.tail_start:offset - plan.tail_start + length])
        elif kind == "made":
            assert isinstance(what, bytes)
            w.add(what)
        elif kind == "chunk":
            w.stored(what, length)
        else:
            while not run[0] <= offset < run[0] + run[1]:
                run_index += 1
                run, data = runs[run_index], next(fetched)
                if len(data) != run[1]:
                    raise InvalidInput("a range came back short")
            w.add(memoryview(data)[offset - run[0]:offset - run[0] + length])
        if progress is not None:
            progress(w.count, size)
