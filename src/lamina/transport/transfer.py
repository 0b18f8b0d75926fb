"""``lamina pull``, ``push`` and ``copy``: one copy between two places, plus the
bookkeeping a registry round trip needs (which repositories hold which blobs, so a later
push can mount instead of upload)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lamina.errors import InvalidInput
from lamina.image.manifest import Descriptor, Platform
from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.compressing import CompressingSink, Conversion, converting_sink
from lamina.transport.copy import CopyEvent, CopyOptions, copy_image
from lamina.transport.places import Place, open_sink, open_source, parse_place
from lamina.transport.registry import BlobPush, RegistryOptions, RegistrySink


@dataclass(frozen=True)
class TransferOptions:
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    platform: Platform | None = None
    all_platforms: bool = False
    on_event: Callable[[CopyEvent], None] | None = None     # per blob, from worker threads
    on_push: Callable[[BlobPush], None] | None = None       # exists / mounted / pushed
    client: Any = None      # a wire.HttpClient for the registry side (tests bring their own)
    # where a push may mount a blob from; default: the repositories the store recorded
    mount_from: Callable[[Descriptor], str | None] | None = None
    # --dest-compress-format/--dest-compress-level: layers leave in this form
    conversion: Conversion | None = None


@dataclass(frozen=True)
class TransferResult:
    source: Place
    destination: Place
    descriptor: Descriptor          # what was written at the top of the destination
    names: tuple[str, ...]
    moved: int                      # blobs copied (not already there)
    present: int                    # blobs the destination already had
    converted: int = 0              # layers written anew in another compression


def transfer(store: Store, src: str | Place, dst: str | Place,
             opts: TransferOptions | None = None) -> TransferResult:
    opts = opts or TransferOptions()
    src_place = src if isinstance(src, Place) else parse_place(src)
    dst_place = dst if isinstance(dst, Place) else parse_place(dst)
    if opts.conversion is not None and dst_place.kind == "docker-archive":
        raise InvalidInput("docker-archive layers are written uncompressed: "
                           "--dest-compress-format needs a registry, a store or an OCI layout")
    opened = open_source(src_place, store, opts.registry, opts.client)
    touched: set[str] = set()
    counts = {"moved": 0, "present": 0}
    lock = threading.Lock()

    def on_event(event: CopyEvent) -> None:
        with lock:
            if event.kind == "exists":
                counts["present"] += 1
                touched.add(str(event.descriptor.digest))
            elif event.kind == "done":
                counts["moved"] += 1
                touched.add(str(event.descriptor.digest))
        if opts.on_event is not None:
            opts.on_event(event)

    try:
        sink, names = open_sink(dst_place, store, opts.registry, opened.name, opts.client,
                                opts.mount_from)
        compressing: CompressingSink | None = None
        if isinstance(sink, RegistrySink) and opts.on_push is not None:
            sink.on_blob = opts.on_push
        if isinstance(sink, RegistrySink) or opts.conversion is not None:
            # Plain layers go to a registry gzip'd, as Docker and skopeo push them;
            # --dest-compress-format converts every layer, to any destination.
            sink = compressing = converting_sink(sink, store, opts.conversion)
        try:
            top = copy_image(opened.source, opened.descriptor, sink, names, CopyOptions(
                platform=opts.platform, all_platforms=opts.all_platforms, on_event=on_event,
                jobs=max(1, opts.registry.jobs)))
            if compressing is not None:
                top = compressing.stored(top)
            sink.close()
        except KeyboardInterrupt:
            # Ctrl-C (copy's Interrupted, or one in the main thread's own reads): a sink
            # that can keep what fully arrived (the store) keeps it for the same command
            # run again; any other undoes its work as on a failure.
            suspend = getattr(sink, "suspend", None)
            (suspend or sink.abort)()
            raise
        except BaseException:
            sink.abort()
            raise
    finally:
        opened.source.close()
    touched.add(str(top.digest))
    if compressing is not None:     # a later push may mount what was sent converted
        touched.update(str(d.digest) for d in compressing.sent())
    for place in (src_place, dst_place):
        if place.kind == "docker" and place.ref is not None:
            store.meta.add_blob_sources(place.ref.registry, place.ref.repository, touched)
    return TransferResult(src_place, dst_place, top, tuple(names), counts["moved"],
                          counts["present"], compressing.converted if compressing else 0)


def pull_place(ref: str) -> tuple[Place, Place]:
    """``lamina pull busybox`` = copy docker://docker.io/library/busybox:latest to the
    store under the same (full) name."""
    r = Reference.parse(ref)
    return Place("docker", f"docker://{r}", ref=r), Place("store", str(r), name=str(r))


def push_places(ref: str, dest: str | None) -> tuple[Place, Place]:
    """``lamina push NAME [DEST]``: DEST defaults to NAME (which then names a registry)."""
    target = Reference.parse(dest or ref)
    return (parse_place(ref), Place("docker", f"docker://{target}", ref=target))
