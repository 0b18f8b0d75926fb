"""Copy an image between any two transports, moving only what the destination lacks."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from lamina.image.manifest import Descriptor, Index, Manifest, Platform, current_platform
from lamina.transport.base import ImageSink, ImageSource, read_blob
from lamina.transport.resolve import fetch_manifest


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a copy, raised once every worker has stopped: ``done`` of the
    ``total`` blobs of the manifest being copied had arrived (or were there already)."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} blobs")
        self.done = done
        self.total = total


@dataclass(frozen=True)
class CopyEvent:
    """What happened to one blob: ``exists`` (skipped), ``start``, ``progress``, ``done``."""

    kind: str
    descriptor: Descriptor
    done: int = 0
    total: int | None = None
    reused: int = 0     # "done": bytes taken from the destination instead (delta pull)


@dataclass(frozen=True)
class CopyOptions:
    platform: Platform | None = None
    all_platforms: bool = False     # copy every manifest of an index (sink permitting)
    on_event: Callable[[CopyEvent], None] | None = None
    # Blobs of one manifest copied at once, when both source and sink say they can
    # take it (a true class attribute ``concurrent_blobs``: the store and registries do,
    # archives and layouts do not).  on_event is then called from worker threads.
    jobs: int = 1


def _emit(opts: CopyOptions, event: CopyEvent) -> None:
    if opts.on_event is not None:
        opts.on_event(event)


def _copy_blob(source: ImageSource, sink: ImageSink, desc: Descriptor, opts: CopyOptions) -> None:
    if sink.has_blob(desc):
        _emit(opts, CopyEvent("exists", desc, desc.size, desc.size))
        return
    _emit(opts, CopyEvent("start", desc, 0, desc.size))

    def progress(done: int, total: int | None) -> None:
        _emit(opts, CopyEvent("progress", desc, done, total))

    # A zstd:chunked layer from a source that serves ranges, into a sink that can
    # reuse its frames: fetch only what is missing (transport/delta.py); else whole.
    ranges = getattr(source, "blob_ranges", None)
    put_delta = getattr(sink, "put_blob_delta", None)
    if ranges is not None and put_delta is not None and desc.annotations:
        reused = put_delta(desc, ranges(desc), progress if opts.on_event else None)
        if reused is not None:
            _emit(opts, CopyEvent("done", desc, desc.size, desc.size, reused))
            return
    with source.open_blob(desc) as reader:
        sink.put_blob(desc, reader, progress if opts.on_event else None)
    _emit(opts, CopyEvent("done", desc, desc.size, desc.size))


def _copy_blobs(source: ImageSource, sink: ImageSink, blobs: list[Descriptor],
                opts: CopyOptions) -> None:
    """Copy blobs, ``opts.jobs`` at a time.  On the first failure nothing new starts;
    the ones running finish (or fail) and the first error is raised.  On Ctrl-C the
    ones running are stopped too (``cancel``), and ``Interrupted`` says how far it got."""
    unique = list({b.digest: b for b in blobs}.values())
    concurrent = getattr(source, "concurrent_blobs", False) and getattr(
        sink, "concurrent_blobs", False)
    if opts.jobs <= 1 or len(unique) <= 1 or not concurrent:
        done = 0
        try:
            for blob in unique:
                _copy_blob(source, sink, blob, opts)
                done += 1
        except KeyboardInterrupt:
            raise Interrupted(done, len(unique)) from None
        return
    # Largest first (the "longest processing time" rule): the last blob to start is a
    # small one, so the workers finish together instead of one big blob running alone
    # at the end.  Python's sort is stable: equal sizes keep the manifest's order.
    unique.sort(key=lambda b: -b.size)
    with ThreadPoolExecutor(max_workers=min(opts.jobs, len(unique)),
                            thread_name_prefix="lamina-copy") as pool:
        futures = [pool.submit(_copy_blob, source, sink, blob, opts) for blob in unique]
        try:
            for future in as_completed(futures):
                future.result()
        except KeyboardInterrupt:
            # The signal reaches only this thread: without a word to them the workers
            # would each finish their blob (a big layer: minutes) before the pool's
            # shutdown returned.  cancel() makes their blocked reads and writes end now.
            for future in futures:
                future.cancel()
            for side in (source, sink):
                cancel = getattr(side, "cancel", None)
                if cancel is not None:
                    cancel()
            pool.shutdown(wait=True)
            done = sum(1 for f in futures if not f.cancelled() and f.exception() is None)
            raise Interrupted(done, len(unique)) from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _copy_manifest(source: ImageSource, sink: ImageSink, desc: Descriptor, manifest: Manifest,
                   names: list[str] | None, opts: CopyOptions) -> None:
    _copy_blobs(source, sink, manifest.blobs(), opts)
    sink.put_manifest(desc, manifest.raw, names)


def copy_image(source: ImageSource, desc: Descriptor, sink: ImageSink, names: list[str],
               opts: CopyOptions | None = None) -> Descriptor:
    """Copy the image ``desc`` names in ``source`` to ``sink`` under ``names``; return the
    descriptor of what was written at the top (the index, or the chosen manifest).

    Does not close the sink: several images may go into one archive."""
    opts = opts or CopyOptions()
    doc = fetch_manifest(source, desc)
    if isinstance(doc, Index):
        if opts.all_platforms and sink.accepts_index:
            for child in doc.manifests:
                sub = fetch_manifest(source, child)
                if isinstance(sub, Index):
                    copy_image(source, child, sink, [], opts)
                    continue
                _copy_manifest(source, sink, child, sub, None, opts)
            sink.put_manifest(desc, doc.raw, names)
            return desc
        chosen = doc.select(opts.platform or current_platform())
        return copy_image(source, chosen, sink, names, opts)
    _copy_manifest(source, sink, desc, doc, names, opts)
    return desc


def manifest_bytes(source: ImageSource, desc: Descriptor) -> bytes:
    return read_blob(source, desc)
