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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lamina.build.placeio import Reach, Side, open_output, open_side, plain_name
from lamina.digest import Digest
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
from lamina.transport.places import Place, parse_place
from lamina.transport.registry import BlobPush, RegistryOptions


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


def _reach(opts: RebaseOptions) -> Reach:
    return Reach(opts.registry, opts.client, opts.on_push)


def _base_places(image: Side, opts: RebaseOptions) -> tuple[Place, Place]:
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


def rebase(store: Store, opts: RebaseOptions) -> RebaseResult:
    image_place = parse_place(opts.image)
    sides: list[Side] = []
    reach = _reach(opts)
    try:
        image = open_side(store, image_place, reach, opts.platform)
        sides.append(image)
        if image.image.index is not None and opts.platform is None:
            # crane refuses too: the result is one platform's image, and writing it over
            # the index's name would drop the others.
            raise InvalidInput(f"{opts.image} is an index: rebase one platform's image "
                               "with --platform OS/ARCH")
        plat = opts.platform or image.image.config.platform
        old_place, new_place = _base_places(image, opts)
        old = open_side(store, old_place, reach, plat)
        sides.append(old)
        new = open_side(store, new_place, reach, plat)
        sides.append(new)
        return _rebase(store, opts, image, old, new)
    finally:
        for side in sides:
            side.source.close()


def _rebase(store: Store, opts: RebaseOptions, image: Side, old: Side,
            new: Side) -> RebaseResult:
    check_based_on(image.image.config, old.image.config, opts.image,
                   opts.old_base or old.label())
    comment = f"rebased from {old.label()} onto {new.label()}"
    config = rebase_config(image.image.config, old.image.config, new.image.config, comment)
    n_old = len(old.image.manifest.layers)
    own = list(image.image.manifest.layers[n_old:])
    layers = [*new.image.manifest.layers, *own]
    base_name = new.opened.name or plain_name(new.place)
    manifest = new_manifest(image.image.manifest, config, layers, {
        BASE_NAME: base_name, BASE_DIGEST: str(new.opened.descriptor.digest)})
    # Where each blob comes from: the new base's layers from NEW, the rest from IMAGE.
    origin: dict[Digest, Side] = {d.digest: image for d in own}
    origin.update({d.digest: new for d in new.image.manifest.layers})
    out = open_output(store, image, parse_place(opts.tag) if opts.tag else None,
                      _reach(opts), origin)
    try:
        for desc in manifest.layers:
            out.put(desc, origin[desc.digest].source)
        out.finish(manifest, config)
    except BaseException:
        out.sink.abort()
        raise
    return RebaseResult(out.place, tuple(out.names), manifest.descriptor(), manifest.config,
                        old.label(), new.label(), n_old, len(new.image.manifest.layers),
                        len(own), out.moved, out.present, out.mounted)
