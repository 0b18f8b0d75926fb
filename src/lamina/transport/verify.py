"""Is an image in the store one that can be unpacked?  What ``load`` checks before it
tags (every layer decompressed once and its diff_id compared, as Docker's load does),
what ``pull`` checks before it tags (the cheap part: one diff_id per layer, known layer
media types), and what ``fsck`` checks for every image the store holds.

A layer found good is remembered (``verified_layers``: blob digest → diff_id, a fact
about content), so a layer shared by many images is decompressed once, ever.
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina.digest import Digest
from lamina.errors import IntegrityError, InvalidManifest, LaminaError, Unsupported
from lamina.image import mediatypes as mt
from lamina.image.config import ImageConfig, parse_config
from lamina.image.manifest import Index, Manifest, parse
from lamina.store.store import Store


def image_config(store: Store, manifest: Manifest, what: str) -> ImageConfig | None:
    """The manifest's image config, checked against its layers (one diff_id per layer,
    every layer of a type lamina can unpack); None for an artifact (a config that is
    not an image config: its layers are not a root filesystem) or a config not stored."""
    if manifest.config.media_type not in mt.CONFIGS or not store.blobs.has(
            manifest.config.digest):
        return None
    config = parse_config(store.blobs.read_bytes(manifest.config.digest, manifest.config.size),
                          what=f"{what}: config {manifest.config.digest}")
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidManifest(f"{what} has {len(manifest.layers)} layers but its config "
                              f"lists {len(config.diff_ids)} diff_ids")
    for i, layer in enumerate(manifest.layers, 1):
        if not mt.is_layer(layer.media_type):
            raise Unsupported(f"{what}: layer {i} ({layer.digest}) cannot be unpacked: its "
                              f"media type {layer.media_type!r} is no layer type lamina "
                              "knows")
    return config


def verify_layers(store: Store, manifest: Manifest, config: ImageConfig, what: str) -> None:
    """Decompress every layer not verified before and compare it with its diff_id;
    raise the first problem, naming the layer."""
    # Imported here: pull runs only image_config, and its import cost is watched.
    from lamina.layer.verify import check_layer

    for i, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True), 1):
        known = store.meta.verified_diff_id(str(layer.digest))
        if known == str(diff_id):
            continue
        try:
            if known is not None:
                raise IntegrityError(f"its content has diff_id {known}, but the config says "
                                  f"{diff_id}")
            if layer.urls and not store.blobs.has(layer.digest):
                continue        # a foreign layer, fetched from its URLs when needed
            with store.blobs.open(layer.digest, layer.size) as reader:
                checked = check_layer(reader, diff_id)
                reader.verify()
        except LaminaError as e:
            raise e.context(f"{what}: layer {i} ({layer.digest}) cannot be unpacked") from None
        store.meta.add_verified_layer(str(layer.digest), str(diff_id))
        # Counted on the way: `images` shows it without decompressing the layer again.
        store.meta.set_unpacked_size(str(diff_id), checked.uncompressed_size)


@dataclass(frozen=True)
class Unpackable:
    image: str          # manifest digest of the image record
    problem: str


def unpackable_images(store: Store) -> list[Unpackable]:
    """Every image record (and index child) whose layers cannot be unpacked: fsck's
    check beyond the bytes.  Missing or corrupt blobs are the blob check's to report."""
    out: list[Unpackable] = []
    seen: set[str] = set()
    todo = [rec.digest for rec in store.meta.images()]
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        digest = Digest.parse(key)
        if not store.blobs.has(digest):
            continue
        what = f"image {key}"
        try:
            doc = parse(store.blobs.read_bytes(digest), None, what=what)
            if isinstance(doc, Index):
                todo.extend(str(d.digest) for d in doc.manifests)
                continue
            if not all(store.blobs.has(d.digest) for d in doc.blobs() if not d.urls):
                continue
            config = image_config(store, doc, what)
            if config is not None:
                verify_layers(store, doc, config, what)
        except LaminaError as e:
            out.append(Unpackable(key, str(e)))
    return out
