"""An image read from any place and a changed one written to any place: what ``rebase``
and ``squash`` share.

A *side* is an image opened where it lives (``copy``'s places: the store,
``docker://…``, ``oci:…``, ``oci-archive:…``, ``docker-archive:…``), its manifest and
config read.  The result goes to ``-t DEST``, by default IMAGE's own place and name (as
``crane rebase`` / ``crane flatten`` write back to the reference they read), blob by
blob, each only if the destination lacks it.  Into a registry a missing blob is first
*mounted* from the repository of that registry that holds it (distribution-spec
"Mounting a blob from another repository"), and its source is opened only if the mount
is refused — so an operation inside one registry reads no layer it keeps.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina.digest import Digest, Readable, VerifyingReader
from lamina.image.config import ImageConfig
from lamina.image.manifest import Descriptor, Manifest, Platform
from lamina.store.store import Store
from lamina.transport.base import ImageSink, ImageSource
from lamina.transport.local import StoreTransport
from lamina.transport.places import Opened, Place, mount_finder, open_sink, open_source
from lamina.transport.registry import BlobPush, RegistryOptions, RegistrySink
from lamina.transport.resolve import ResolvedImage, resolve_image


@dataclass(frozen=True)
class Reach:
    """How to reach places: registry options, a test's HTTP client, a push observer."""

    registry: RegistryOptions = field(default_factory=RegistryOptions)
    client: Any = None               # a wire.HttpClient for registries (tests)
    on_push: Callable[[BlobPush], None] | None = None


@dataclass
class Side:
    place: Place
    opened: Opened
    image: ResolvedImage

    @property
    def source(self) -> ImageSource:
        return self.opened.source

    def label(self) -> str:
        """name@digest of the top descriptor (an index's digest when it was one)."""
        name = self.opened.name or plain_name(self.place)
        return f"{name.split('@', 1)[0]}@{self.opened.descriptor.digest}"


def plain_name(place: Place) -> str:
    """The name of a place without its scheme: ``docker://r/x:1`` is ``r/x:1``."""
    if place.ref is not None:
        return str(place.ref)
    return place.text


def open_side(store: Store, place: Place, reach: Reach, platform: Platform | None) -> Side:
    opened = open_source(place, store, reach.registry, reach.client)
    try:
        image = resolve_image(opened.source, opened.descriptor, platform)
    except BaseException:
        opened.source.close()
        raise
    return Side(place, opened, image)


class _Lazy:
    """A blob opened on its first read: a registry sink tries a mount first, and a
    mount that works must not have made the source start sending the layer."""

    def __init__(self, opener: Callable[[], VerifyingReader]) -> None:
        self._opener = opener
        self._reader: VerifyingReader | None = None

    def read(self, n: int = -1, /) -> bytes:
        if self._reader is None:
            self._reader = self._opener()
        return self._reader.read(n)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


@dataclass
class Output:
    """Where the result goes: the place, its sink, the names it gets there, and what
    went in (blobs written, of them mounted, already there)."""

    place: Place
    sink: ImageSink
    names: list[str]
    store: Store
    moved: int = 0
    present: int = 0
    mounted: int = 0

    def put(self, desc: Descriptor, source: ImageSource) -> None:
        """Copy a blob ``source`` holds, unless the destination has it."""
        if self.sink.has_blob(desc):
            self.present += 1
            return
        stream: Readable
        if isinstance(self.sink, RegistrySink):
            stream = _Lazy(lambda: source.open_blob(desc))
        else:
            stream = source.open_blob(desc)
        try:
            self.sink.put_blob(desc, stream)  # type: ignore[arg-type]
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        self.moved += 1

    def put_new(self, desc: Descriptor, stream: VerifyingReader) -> None:
        """A blob made by this operation (checked against ``desc`` as it is read)."""
        if self.sink.has_blob(desc):
            self.present += 1
            return
        self.sink.put_blob(desc, stream)
        self.moved += 1

    def finish(self, manifest: Manifest, config: ImageConfig) -> None:
        """The config, the manifest under the names, and the sink closed (the caller
        calls the sink's ``abort`` on an error, to take back what it wrote)."""
        self.put_new(manifest.config, VerifyingReader(
            io.BytesIO(config.raw), manifest.config.digest, manifest.config.size))
        self.sink.put_manifest(manifest.descriptor(), manifest.raw, self.names)
        self.sink.close()
        if isinstance(self.sink, RegistrySink):
            self.mounted = sum(1 for p in self.sink.results.values() if p.kind == "mounted")
            ref = self.place.ref
            if ref is not None:   # a later push there may mount these
                self.store.meta.add_blob_sources(ref.registry, ref.repository,
                                                 [str(d.digest) for d in manifest.blobs()]
                                                 + [str(manifest.digest)])


def open_output(store: Store, image: Side, dest: Place | None, reach: Reach,
                origin: Mapping[Digest, Side]) -> Output:
    """The destination ``dest`` (None: IMAGE's own place and name; an image named by
    digest or id stays unnamed).  ``origin``: the side each kept blob comes from, for a
    registry destination to mount it from that side's repository when it can."""
    place = dest or image.place
    if place.kind == "store":
        name = place.name if dest is not None else image.opened.name
        if name is None:
            return Output(place, StoreTransport(store), [], store)
    else:
        name = image.opened.name   # a layout or archive names the entry after it
    fallback = mount_finder(store, place.ref) if place.ref is not None else None

    def find(desc: Descriptor) -> str | None:
        side = origin.get(desc.digest)
        if side is not None and side.place.ref is not None and place.ref is not None and \
                side.place.ref.registry == place.ref.registry:
            return side.place.ref.repository
        return fallback(desc) if fallback is not None else None

    sink, names = open_sink(place, store, reach.registry, name, reach.client, mount_from=find)
    if isinstance(sink, RegistrySink) and reach.on_push is not None:
        sink.on_blob = reach.on_push
    return Output(place, sink, names, store)
