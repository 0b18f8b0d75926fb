"""``lamina rebase``: move an image from its old base onto a new one, wherever they are.

    rebase(store, RebaseOptions(image, old_base, new_base, tag))

IMAGE, OLD and NEW are places as ``copy`` names them (``docker://…`` a registry, a
plain reference the store, ``oci:…`` a layout).  Their manifests and configs are read
(``transport.resolve``); no layer is.  ``image.mutate`` checks that IMAGE's bottom
layers are OLD's (by diff_id) and makes the new config and manifest; then the result
goes to the destination (``-t``, default IMAGE's own place and name, as ``crane
rebase``) blob by blob, each only if the destination lacks it: the new base's layers
from NEW's place, the image's own layers from IMAGE's, the new config, then the
manifest.  Into a registry a missing layer is first *mounted* from the repository that
holds it when that is on the same registry (distribution-spec "Mounting a blob from
another repository"), and its source is opened only if the mount is refused — so a
rebase inside one registry pulls no layer and uploads only the config (and the
manifest).

Without ``--old-base`` (and ``--new-base``) the image's own annotations tell
(``org.opencontainers.image.base.name`` / ``.base.digest``, which every rebase records
and ``crane rebase`` reads the same way): the old base is the base name's repository at
the recorded digest, the new base the base name as it resolves now.  Those names are
places of IMAGE's kind: a registry image's base is in a registry, a store image's in
the store.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lamina.digest import Digest, Readable, VerifyingReader
from lamina.errors import InvalidInput, InvalidReference
from lamina.image.manifest import Descriptor, Platform
from lamina.image.mutate import (
    BASE_DIGEST,
    BASE_NAME,
    check_based_on,
    new_manifest,
    rebase_config,
)
from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.base import ImageSink, ImageSource
from lamina.transport.local import StoreTransport
from lamina.transport.places import Opened, Place, open_sink, open_source, parse_place
from lamina.transport.registry import BlobPush, RegistryOptions, RegistrySink
from lamina.transport.resolve import ResolvedImage, resolve_image


@dataclass(frozen=True)
class RebaseOptions:
    image: str
    old_base: str | None = None
    new_base: str | None = None
    tag: str | None = None           # where the result goes (default: IMAGE itself)
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    platform: Platform | None = None
    client: Any = None               # a wire.HttpClient for registries (tests)
    on_push: Callable[[BlobPush], None] | None = None


@dataclass(frozen=True)
class RebaseResult:
    destination: Place
    names: tuple[str, ...]
    manifest: Descriptor
    config: Descriptor
    old_base: str                    # name@digest as recorded in the history
    new_base: str
    replaced: int                    # the old base's layers, gone
    inserted: int                    # the new base's layers, in their place
    kept: int                        # the image's own layers, the same blobs
    moved: int                       # blobs the destination got (config included)
    present: int                     # blobs it had already
    mounted: int = 0                 # of ``moved``: mounted from another repository


@dataclass
class _Side:
    place: Place
    opened: Opened
    image: ResolvedImage

    @property
    def source(self) -> ImageSource:
        return self.opened.source

    def label(self) -> str:
        """name@digest of the top descriptor (an index's digest when it was one)."""
        name = self.opened.name or _plain(self.place)
        return f"{name.split('@', 1)[0]}@{self.opened.descriptor.digest}"


def _plain(place: Place) -> str:
    """The name of a place without its scheme: ``docker://r/x:1`` is ``r/x:1``."""
    if place.ref is not None:
        return str(place.ref)
    return place.text


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


def _open(store: Store, place: Place, opts: RebaseOptions,
          platform: Platform | None) -> _Side:
    opened = open_source(place, store, opts.registry, opts.client)
    try:
        image = resolve_image(opened.source, opened.descriptor, platform)
    except BaseException:
        opened.source.close()
        raise
    return _Side(place, opened, image)


def _base_places(image: _Side, opts: RebaseOptions) -> tuple[Place, Place]:
    notes = image.image.manifest.annotations
    recorded = notes.get(BASE_NAME)
    scheme = "docker://" if image.place.kind == "docker" else ""
    new_text = opts.new_base or (scheme + recorded if recorded else None)
    if new_text is None:
        raise InvalidInput(f"{opts.image} records no base ({BASE_NAME}): give --new-base")
    old_text = opts.old_base
    if old_text is None:
        digest = notes.get(BASE_DIGEST)
        if not recorded or not digest:
            raise InvalidInput(f"{opts.image} records no base digest ({BASE_DIGEST}): give "
                               "--old-base")
        try:
            ref = Reference.parse(recorded)
            old_text = scheme + str(Reference(ref.registry, ref.repository, None,
                                              Digest.parse(digest)))
        except InvalidReference as e:
            raise InvalidInput(f"{opts.image}: recorded base {recorded}@{digest}: {e}") \
                from None
    return parse_place(old_text), parse_place(new_text)


def _destination(store: Store, image: _Side, opts: RebaseOptions,
                 mount_from: Callable[[Place], Callable[[Descriptor], str | None]]
                 ) -> tuple[Place, ImageSink, list[str]]:
    """Where the result goes, the sink, and the names to give it there: ``-t``, else
    IMAGE's own place and name (an image named by digest or id stays unnamed)."""
    place = parse_place(opts.tag) if opts.tag else image.place
    if place.kind == "store":
        name = place.name if opts.tag else image.opened.name
        if name is None:
            return place, StoreTransport(store), []
    else:
        name = image.opened.name   # a layout or archive names the entry after it
    sink, names = open_sink(place, store, opts.registry, name, opts.client,
                            mount_from=mount_from(place))
    return place, sink, names


def _mount_finder(dest: Place, sides: dict[Digest, _Side], store: Store
                  ) -> Callable[[Descriptor], str | None]:
    from lamina.transport.places import mount_finder

    fallback = mount_finder(store, dest.ref) if dest.ref is not None else None

    def find(desc: Descriptor) -> str | None:
        side = sides.get(desc.digest)
        if side is not None and side.place.ref is not None and dest.ref is not None and \
                side.place.ref.registry == dest.ref.registry:
            return side.place.ref.repository
        return fallback(desc) if fallback is not None else None

    return find


def rebase(store: Store, opts: RebaseOptions) -> RebaseResult:
    image_place = parse_place(opts.image)
    sides: list[_Side] = []
    try:
        image = _open(store, image_place, opts, opts.platform)
        sides.append(image)
        if image.image.index is not None and opts.platform is None:
            # crane refuses too: the result is one platform's image, and writing it over
            # the index's name would drop the others.
            raise InvalidInput(f"{opts.image} is an index: rebase one platform's image "
                               "with --platform OS/ARCH")
        plat = opts.platform or image.image.config.platform
        old_place, new_place = _base_places(image, opts)
        old = _open(store, old_place, opts, plat)
        sides.append(old)
        new = _open(store, new_place, opts, plat)
        sides.append(new)
        return _rebase(store, opts, image, old, new)
    finally:
        for side in sides:
            side.source.close()


def _rebase(store: Store, opts: RebaseOptions, image: _Side, old: _Side,
            new: _Side) -> RebaseResult:
    check_based_on(image.image.config, old.image.config, opts.image,
                   opts.old_base or old.label())
    comment = f"rebased from {old.label()} onto {new.label()}"
    config = rebase_config(image.image.config, old.image.config, new.image.config, comment)
    n_old = len(old.image.manifest.layers)
    own = list(image.image.manifest.layers[n_old:])
    layers = [*new.image.manifest.layers, *own]
    base_name = new.opened.name or _plain(new.place)
    manifest = new_manifest(image.image.manifest, config, layers, {
        BASE_NAME: base_name, BASE_DIGEST: str(new.opened.descriptor.digest)})
    # Where each blob comes from: the new base's layers from NEW, the rest from IMAGE.
    origin: dict[Digest, _Side] = {d.digest: image for d in own}
    origin.update({d.digest: new for d in new.image.manifest.layers})
    dest, sink, names = _destination(store, image, opts,
                                     lambda place: _mount_finder(place, origin, store))
    if isinstance(sink, RegistrySink) and opts.on_push is not None:
        sink.on_blob = opts.on_push
    counts = {"moved": 0, "present": 0}
    try:
        for desc in manifest.layers:
            _put(sink, desc, origin[desc.digest].source, counts)
        config_desc = manifest.config
        if sink.has_blob(config_desc):
            counts["present"] += 1
        else:
            sink.put_blob(config_desc, VerifyingReader(io.BytesIO(config.raw),
                                                       config_desc.digest, config_desc.size))
            counts["moved"] += 1
        sink.put_manifest(manifest.descriptor(), manifest.raw, names)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    mounted = 0
    if isinstance(sink, RegistrySink):
        mounted = sum(1 for p in sink.results.values() if p.kind == "mounted")
        if dest.ref is not None:
            store.meta.add_blob_sources(dest.ref.registry, dest.ref.repository,
                                        [str(d.digest) for d in manifest.blobs()]
                                        + [str(manifest.digest)])
    return RebaseResult(dest, tuple(names), manifest.descriptor(), manifest.config,
                        old.label(), new.label(), n_old, len(new.image.manifest.layers),
                        len(own), counts["moved"], counts["present"], mounted)


def _put(sink: ImageSink, desc: Descriptor, source: ImageSource,
         counts: dict[str, int]) -> None:
    if sink.has_blob(desc):
        counts["present"] += 1
        return
    stream: Readable
    if isinstance(sink, RegistrySink):
        stream = _Lazy(lambda: source.open_blob(desc))
    else:
        stream = source.open_blob(desc)
    try:
        sink.put_blob(desc, stream)  # type: ignore[arg-type]
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    counts["moved"] += 1


